//! PNG figures for the report: loss trajectories, score histograms with the threshold, ROC
//! curves and sweeps. Text needs a TrueType font: DejaVu Sans from Debian's fonts-dejavu-core
//! (scripts/setup.sh installs it) or the file named by `LOSSGATE_FONT`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{anyhow, Context, Result};
use ndarray::Array2;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::FontStyle;

use super::metrics::roc_curve;
use super::sweep::Sweep;
use super::PlotData;

const WIDTH: u32 = 900;
const HEIGHT: u32 = 560;
const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Line colours: clean first, then one per attack.
const COLOURS: [RGBColor; 10] = [
    RGBColor(0, 0, 0),
    RGBColor(228, 26, 28),
    RGBColor(55, 126, 184),
    RGBColor(77, 175, 74),
    RGBColor(152, 78, 163),
    RGBColor(255, 127, 0),
    RGBColor(166, 86, 40),
    RGBColor(247, 129, 191),
    RGBColor(120, 120, 120),
    RGBColor(23, 190, 207),
];

pub fn colour(i: usize) -> RGBColor {
    COLOURS[i % COLOURS.len()]
}

/// Registers the font once per process.
fn ensure_font() -> Result<()> {
    static LOADED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            let path = std::env::var_os("LOSSGATE_FONT").map(PathBuf::from).unwrap_or(DEFAULT_FONT.into());
            let bytes = std::fs::read(&path).map_err(|e| {
                format!(
                    "the plots need a TrueType font; {}: {e} (apt-get install fonts-dejavu-core, or set LOSSGATE_FONT)",
                    path.display()
                )
            })?;
            plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(bytes.into_boxed_slice()))
                .map_err(|_| format!("{} is not a usable TrueType font", path.display()))
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

/// One line of a chart; `spread` draws a vertical bar of +- that much at each point.
pub struct Series {
    pub name: String,
    pub colour: RGBColor,
    pub points: Vec<(f64, f64)>,
    pub spread: Option<Vec<f64>>,
    pub dashed: bool,
}

pub struct Chart<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub x_range: (f64, f64),
    pub y_range: (f64, f64),
    /// Tick labels for categorical x axes (points at 0, 1, 2, ...).
    pub x_ticks: Option<Vec<String>>,
    pub vertical_line: Option<(f64, &'a str)>,
}

type Plane<'a, 'b> = ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// The series' legend, top right, the same on every chart.
fn draw_legend<'a, 'b: 'a>(ctx: &mut Plane<'a, 'b>) -> std::result::Result<(), Box<dyn std::error::Error>> {
    ctx.configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    Ok(())
}

pub fn line_chart(path: &Path, chart: &Chart, series: &[Series]) -> Result<()> {
    ensure_font()?;
    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    let draw = || -> std::result::Result<(), Box<dyn std::error::Error>> {
        root.fill(&WHITE)?;
        let mut ctx = ChartBuilder::on(&root)
            .caption(chart.title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(60)
            .build_cartesian_2d(chart.x_range.0..chart.x_range.1, chart.y_range.0..chart.y_range.1)?;
        let ticks = chart.x_ticks.clone();
        let mut mesh = ctx.configure_mesh();
        mesh.x_desc(chart.x_label).y_desc(chart.y_label).label_style(("sans-serif", 14));
        let formatter = move |x: &f64| match &ticks {
            Some(t) if (x - x.round()).abs() < 1e-6 => t.get(x.round() as usize).cloned().unwrap_or_default(),
            Some(_) => String::new(),
            None if x.fract() == 0.0 => format!("{x:.0}"),
            None => format!("{x:.2}"),
        };
        if let Some(t) = &chart.x_ticks {
            mesh.x_labels(t.len());
        }
        mesh.x_label_formatter(&formatter).draw()?;
        if let Some((x, label)) = chart.vertical_line {
            let (lo, hi) = chart.y_range;
            let grey = RGBColor(110, 110, 110).stroke_width(2);
            ctx.draw_series(DashedLineSeries::new(vec![(x, lo), (x, hi)], 6, 4, grey))?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], grey));
        }
        for s in series {
            let style = s.colour.stroke_width(2);
            let legend = move |(x, y): (i32, i32)| PathElement::new(vec![(x, y), (x + 20, y)], style);
            if s.dashed {
                ctx.draw_series(DashedLineSeries::new(s.points.clone(), 8, 5, style))?
                    .label(&s.name)
                    .legend(legend);
            } else {
                ctx.draw_series(LineSeries::new(s.points.clone(), style))?.label(&s.name).legend(legend);
            }
            if let Some(spread) = &s.spread {
                ctx.draw_series(s.points.iter().zip(spread).map(|(&(x, y), &d)| {
                    PathElement::new(vec![(x, y - d), (x, y + d)], s.colour.stroke_width(1))
                }))?;
                ctx.draw_series(s.points.iter().map(|&p| Circle::new(p, 3, s.colour.filled())))?;
            }
        }
        draw_legend(&mut ctx)?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| anyhow!("drawing {}: {e}", path.display()))
}

fn group_names(attacks: &[String]) -> Vec<String> {
    std::iter::once("clean".to_string()).chain(attacks.iter().cloned()).collect()
}

/// Group 0 is clean, group a+1 is attack a.
fn group_of(origin: Option<usize>) -> usize {
    origin.map_or(0, |a| a + 1)
}

/// Median loss per epoch of clean samples, each attack's poisons and the probes.
pub fn trajectories(path: &Path, data: &PlotData, attacks: &[String]) -> Result<()> {
    let losses: &Array2<f32> = &data.first_window_losses;
    let samples = data.first_window_origin.len();
    let epochs = losses.ncols();
    let mut rows: Vec<Vec<usize>> = vec![Vec::new(); attacks.len() + 2];
    for i in 0..losses.nrows() {
        let group = if i < samples { group_of(data.first_window_origin[i]) } else { attacks.len() + 1 };
        rows[group].push(i);
    }
    let mut names = group_names(attacks);
    names.push("probes".into());
    let mut series = Vec::new();
    let mut top = 0.0f64;
    for (group, members) in rows.iter().enumerate().filter(|(_, m)| !m.is_empty()) {
        let points: Vec<(f64, f64)> = (0..epochs)
            .map(|e| {
                let mut values: Vec<f32> = members.iter().map(|&i| losses[[i, e]]).collect();
                values.sort_by(f32::total_cmp);
                (e as f64 + 1.0, values[values.len() / 2] as f64)
            })
            .collect();
        top = top.max(points.iter().map(|p| p.1).fold(0.0, f64::max));
        series.push(Series {
            name: format!("{} (n={})", names[group], members.len()),
            colour: if group == attacks.len() + 1 { colour(8) } else { colour(group) },
            points,
            spread: None,
            dashed: group == attacks.len() + 1,
        });
    }
    let chart = Chart {
        title: "Median loss trajectory, first window of the first seed",
        x_label: "shadow epoch",
        y_label: "loss on the given label",
        x_range: (1.0, epochs as f64),
        y_range: (0.0, top * 1.05),
        x_ticks: None,
        vertical_line: None,
    };
    line_chart(path, &chart, &series)
}

/// Histogram (share of each group per bin) of log2(score / threshold): the threshold at 0,
/// clean samples to its left, poisons that stand out far to its right.
pub fn score_histogram(
    path: &Path,
    scores: &[f32],
    origin: &[Option<usize>],
    attacks: &[String],
    title: &str,
) -> Result<()> {
    const BINS: usize = 80;
    const LOW: f64 = -4.0;
    const HIGH: f64 = 6.0;
    let width = (HIGH - LOW) / BINS as f64;
    let names = group_names(attacks);
    let mut counts = vec![vec![0usize; BINS]; names.len()];
    for (&s, &o) in scores.iter().zip(origin) {
        let x = (s.max(1e-9) as f64).log2().clamp(LOW, HIGH - 1e-9);
        counts[group_of(o)][((x - LOW) / width) as usize] += 1;
    }
    let mut series = Vec::new();
    let mut top = 0.0f64;
    for (group, bins) in counts.iter().enumerate() {
        let total = bins.iter().sum::<usize>();
        if total == 0 {
            continue;
        }
        let points: Vec<(f64, f64)> = bins
            .iter()
            .enumerate()
            .flat_map(|(b, &c)| {
                let share = c as f64 / total as f64;
                [(LOW + b as f64 * width, share), (LOW + (b + 1) as f64 * width, share)]
            })
            .collect();
        top = top.max(points.iter().map(|p| p.1).fold(0.0, f64::max));
        series.push(Series {
            name: names[group].clone(),
            colour: colour(group),
            points,
            spread: None,
            dashed: false,
        });
    }
    let chart = Chart {
        title,
        x_label: "log2(score / window threshold); ends clamped",
        y_label: "share of the group",
        x_range: (LOW, HIGH),
        y_range: (0.0, top * 1.05),
        x_ticks: None,
        vertical_line: Some((0.0, "threshold")),
    };
    line_chart(path, &chart, &series)
}

/// ROC curve of each attack's poisons against clean samples.
pub fn roc(
    path: &Path,
    scores: &[f32],
    origin: &[Option<usize>],
    attacks: &[String],
    title: &str,
) -> Result<()> {
    let mut series = Vec::new();
    for (a, name) in attacks.iter().enumerate() {
        let (s, p): (Vec<f32>, Vec<bool>) = origin
            .iter()
            .zip(scores)
            .filter(|(o, _)| o.is_none() || **o == Some(a))
            .map(|(o, &s)| (s, o.is_some()))
            .unzip();
        let points = thin(roc_curve(&s, &p), 400);
        series.push(Series {
            name: name.clone(),
            colour: colour(a + 1),
            points,
            spread: None,
            dashed: false,
        });
    }
    series.push(Series {
        name: "chance".into(),
        colour: colour(8),
        points: vec![(0.0, 0.0), (1.0, 1.0)],
        spread: None,
        dashed: true,
    });
    let chart = Chart {
        title,
        x_label: "clean false-reject rate",
        y_label: "poisons caught",
        x_range: (0.0, 1.0),
        y_range: (0.0, 1.0),
        x_ticks: None,
        vertical_line: None,
    };
    line_chart(path, &chart, &series)
}

/// At most `n` evenly spaced points of a curve (keeps the PNG cheap to draw).
fn thin(points: Vec<(f64, f64)>, n: usize) -> Vec<(f64, f64)> {
    let step = points.len().div_ceil(n).max(1);
    let last = *points.last().unwrap_or(&(1.0, 1.0));
    let mut out: Vec<(f64, f64)> = points.into_iter().step_by(step).collect();
    out.push(last);
    out
}

/// A sweep: poisons caught, clean false-reject and (with victims) mean attack success, each
/// mean +- sd over seeds, against the swept value.
pub fn sweep(path: &Path, sweep: &Sweep) -> Result<()> {
    let xs: Vec<f64> = (0..sweep.points.len()).map(|i| i as f64).collect();
    let line = |name: &str, c: usize, f: &dyn Fn(&super::sweep::SweepPoint) -> Option<super::Summary>| {
        let values: Vec<super::Summary> = sweep.points.iter().filter_map(f).collect();
        (values.len() == xs.len()).then(|| Series {
            name: name.into(),
            colour: colour(c),
            points: xs.iter().zip(&values).map(|(&x, s)| (x, s.mean)).collect(),
            spread: Some(values.iter().map(|s| s.spread).collect()),
            dashed: false,
        })
    };
    let series: Vec<Series> = [
        line("poisons caught", 3, &|p| Some(p.caught)),
        line("clean false-reject", 1, &|p| Some(p.clean_false_reject)),
        line("ROC-AUC", 2, &|p| Some(p.auc)),
        line("mean attack success (victim)", 4, &|p| p.mean_attack_success),
    ]
    .into_iter()
    .flatten()
    .collect();
    let title = format!("Sweep: {} ({} samples per seed)", sweep.param.name(), sweep.stream_samples);
    let chart = Chart {
        title: &title,
        x_label: sweep.param.name(),
        y_label: "rate (mean +- sd over seeds)",
        x_range: (-0.3, xs.len() as f64 - 0.7),
        y_range: (0.0, 1.05),
        x_ticks: Some(sweep.points.iter().map(|p| format!("{}", p.value)).collect()),
        vertical_line: None,
    };
    line_chart(path, &chart, &series).context("sweep plot")
}

/// The comparison's figures: trajectories, and per scoring defence a histogram and ROC curves;
/// and the first window's loss matrix as CSV for your own analysis.
pub fn comparison(out: &Path, data: &PlotData, attacks: &[String]) -> Result<()> {
    trajectories(&out.join("trajectories.png"), data, attacks)?;
    trajectories_csv(&out.join("trajectories-seed1-window0.csv"), data, attacks)?;
    let runs = [
        ("lossgate", "lossgate (windows)", Some(&data.lossgate_scores)),
        ("offline", "offline BaDLoss (one window, 40 %)", data.offline_scores.as_ref()),
    ];
    for (file, name, scores) in runs {
        let Some(scores) = scores else { continue };
        let histogram_title = format!("{name}: score / threshold, seed 1");
        score_histogram(
            &out.join(format!("scores-{file}.png")),
            scores,
            &data.origin,
            attacks,
            &histogram_title,
        )?;
        let roc_title = format!("ROC per attack: {name}, seed 1");
        roc(&out.join(format!("roc-{file}.png")), scores, &data.origin, attacks, &roc_title)?;
    }
    Ok(())
}

/// One row per sample of the first window (probes last): `kind` (clean, an attack's name or
/// probe), `label`, then the loss after each shadow epoch.
fn trajectories_csv(path: &Path, data: &PlotData, attacks: &[String]) -> Result<()> {
    use std::fmt::Write as _;
    let losses = &data.first_window_losses;
    let mut out = String::from("kind,label");
    for e in 0..losses.ncols() {
        let _ = write!(out, ",epoch{}", e + 1);
    }
    out.push('\n');
    for (i, row) in losses.rows().into_iter().enumerate() {
        let kind = match data.first_window_origin.get(i) {
            Some(Some(a)) => attacks[*a].as_str(),
            Some(None) => "clean",
            None => "probe",
        };
        let _ = write!(out, "{kind},{}", data.first_window_labels[i]);
        for v in row {
            let _ = write!(out, ",{v}");
        }
        out.push('\n');
    }
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
}

/// One sample's loss trajectory against the band (p10-p90 shaded, median dashed) of its
/// window's clean probes; with `image` (`[height, width]`, features row by row) the sample is
/// drawn in greyscale on the right. `lossgate quarantine show` writes it.
pub fn trajectory_against_band(
    path: &Path,
    title: &str,
    trajectory: &[f32],
    band: &[[f32; 3]],
    image: Option<([usize; 2], &[f32])>,
) -> Result<()> {
    ensure_font()?;
    let epochs = trajectory.len().min(band.len());
    if epochs == 0 {
        return Err(anyhow!("no epochs to draw"));
    }
    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    let draw = || -> std::result::Result<(), Box<dyn std::error::Error>> {
        root.fill(&WHITE)?;
        let (left, right) = match image {
            Some(_) => root.split_horizontally(WIDTH * 2 / 3),
            None => (root.clone(), root.margin(0, 0, WIDTH as i32, 0)),
        };
        let x = |e: usize| e as f64 + 1.0;
        let top =
            trajectory.iter().chain(band.iter().map(|b| &b[2])).fold(0.0f32, |m, &v| m.max(v)) as f64 * 1.1;
        let mut ctx = ChartBuilder::on(&left)
            .caption(title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(1.0..x(epochs - 1).max(2.0), 0.0..top.max(1e-3))?;
        ctx.configure_mesh()
            .x_desc("shadow epoch")
            .y_desc("loss on its label")
            .label_style(("sans-serif", 14))
            .draw()?;
        let grey = RGBColor(120, 120, 120);
        let mut outline: Vec<(f64, f64)> = (0..epochs).map(|e| (x(e), band[e][0] as f64)).collect();
        outline.extend((0..epochs).rev().map(|e| (x(e), band[e][2] as f64)));
        ctx.draw_series(std::iter::once(Polygon::new(outline, grey.mix(0.25).filled())))?
            .label("probes of its label, p10-p90")
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 20, y + 5)], grey.mix(0.25).filled()));
        let median: Vec<(f64, f64)> = (0..epochs).map(|e| (x(e), band[e][1] as f64)).collect();
        ctx.draw_series(DashedLineSeries::new(median, 8, 5, grey.stroke_width(2)))?
            .label("probes, median")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], grey.stroke_width(2)));
        let red = colour(1);
        let own: Vec<(f64, f64)> = (0..epochs).map(|e| (x(e), trajectory[e] as f64)).collect();
        ctx.draw_series(LineSeries::new(own.clone(), red.stroke_width(3)))?
            .label("this record")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], red.stroke_width(3)));
        ctx.draw_series(own.into_iter().map(|p| Circle::new(p, 3, red.filled())))?;
        draw_legend(&mut ctx)?;
        if let Some(([height, width], pixels)) = image {
            let side =
                ((WIDTH / 3 - 24) as usize / width.max(1)).min((HEIGHT - 80) as usize / height.max(1)).max(1);
            let (lo, hi) = pixels.iter().fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
            let span = if hi > lo { hi - lo } else { 1.0 };
            let (x0, y0) = (12i32, 60i32);
            for r in 0..height {
                for c in 0..width {
                    let v = pixels.get(r * width + c).copied().unwrap_or(lo);
                    let shade = (255.0 * (1.0 - (v - lo) / span)) as u8;
                    let (px, py) = (x0 + (c * side) as i32, y0 + (r * side) as i32);
                    right.draw(&Rectangle::new(
                        [(px, py), (px + side as i32, py + side as i32)],
                        RGBColor(shade, shade, shade).filled(),
                    ))?;
                }
            }
            right.draw(&Text::new("the sample", (x0, 30), ("sans-serif", 16)))?;
        }
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| anyhow!("drawing {}: {e}", path.display()))
}
