//! Building ONNX graphs in Rust: hand-declared protobuf messages and a small graph builder.
//!
//! lossgate writes its own train-step and evaluation graphs (see `shadow::graphs`) instead of
//! shipping `.onnx` files, so the model shape comes straight from the config.

pub(crate) mod proto;

use prost::Message;
use proto::{
    attribute_type, data_type, dimension, AttributeProto, Dimension, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, TensorProto, TensorShapeProto, TensorTypeProto, TypeProto, ValueInfoProto,
};

/// The ONNX opset our graphs are written against (ReduceSum takes axes as an input from 13).
pub(crate) const OPSET: i64 = 17;
const IR_VERSION: i64 = 8;

/// Element type of a graph input or output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Elem {
    F32,
    I64,
}

impl Elem {
    fn code(self) -> i32 {
        match self {
            Elem::F32 => data_type::FLOAT,
            Elem::I64 => data_type::INT64,
        }
    }
}

/// One dimension of a declared shape: fixed, or symbolic (e.g. the batch size).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Dim {
    Fixed(usize),
    Symbolic(&'static str),
}

/// An attribute of a node.
pub(crate) enum Attr {
    Int(&'static str, i64),
    Float(&'static str, f32),
}

impl Attr {
    fn into_proto(self) -> AttributeProto {
        let mut a = AttributeProto::default();
        match self {
            Attr::Int(name, v) => {
                a.name = name.into();
                a.i = v;
                a.r#type = attribute_type::INT;
            }
            Attr::Float(name, v) => {
                a.name = name.into();
                a.f = v;
                a.r#type = attribute_type::FLOAT;
            }
        }
        a
    }
}

/// Accumulates nodes, inputs, outputs and constants; names intermediate values itself.
#[derive(Default)]
pub(crate) struct GraphBuilder {
    graph: GraphProto,
    next_id: usize,
}

fn value_info(name: &str, elem: Elem, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Fixed(n) => dimension::Value::DimValue(*n as i64),
                Dim::Symbolic(s) => dimension::Value::DimParam((*s).to_string()),
            }),
        })
        .collect();
    ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto {
                elem_type: elem.code(),
                shape: Some(TensorShapeProto { dim }),
            }),
        }),
    }
}

impl GraphBuilder {
    pub(crate) fn new(name: &str) -> Self {
        let mut b = Self::default();
        b.graph.name = name.to_string();
        b
    }

    /// Declares a graph input and returns its name.
    pub(crate) fn input(&mut self, name: &str, elem: Elem, dims: &[Dim]) -> String {
        self.graph.input.push(value_info(name, elem, dims));
        name.to_string()
    }

    /// Declares `value` (already produced by a node) as a graph output.
    pub(crate) fn output(&mut self, value: &str, elem: Elem, dims: &[Dim]) {
        self.graph.output.push(value_info(value, elem, dims));
    }

    /// Adds a node with one output, named automatically; returns the output's name.
    pub(crate) fn op(&mut self, op_type: &str, inputs: &[&str], attrs: Vec<Attr>) -> String {
        self.next_id += 1;
        let out = format!("{}_{}", op_type.to_lowercase(), self.next_id);
        self.op_named(op_type, inputs, &out, attrs);
        out
    }

    /// Adds a node whose single output gets the given name (for graph outputs).
    pub(crate) fn op_named(&mut self, op_type: &str, inputs: &[&str], output: &str, attrs: Vec<Attr>) {
        self.graph.node.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.to_string()],
            name: format!("n{}_{}", self.graph.node.len(), op_type),
            op_type: op_type.to_string(),
            attribute: attrs.into_iter().map(Attr::into_proto).collect(),
        });
    }

    /// A constant f32 tensor stored in the graph.
    pub(crate) fn const_f32(&mut self, dims: &[usize], data: Vec<f32>) -> String {
        self.next_id += 1;
        let name = format!("const_{}", self.next_id);
        self.graph.initializer.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: data_type::FLOAT,
            float_data: data,
            name: name.clone(),
            ..Default::default()
        });
        name
    }

    /// A constant i64 tensor stored in the graph.
    pub(crate) fn const_i64(&mut self, dims: &[usize], data: Vec<i64>) -> String {
        self.next_id += 1;
        let name = format!("const_{}", self.next_id);
        self.graph.initializer.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: data_type::INT64,
            int64_data: data,
            name: name.clone(),
            ..Default::default()
        });
        name
    }

    /// Gemm with optional transposes: `op(a) · op(b) (+ c)`.
    pub(crate) fn gemm(&mut self, a: &str, b: &str, c: Option<&str>, trans_a: bool, trans_b: bool) -> String {
        let mut inputs = vec![a, b];
        inputs.extend(c);
        let attrs = vec![Attr::Int("transA", trans_a as i64), Attr::Int("transB", trans_b as i64)];
        self.op("Gemm", &inputs, attrs)
    }

    /// `a x b + beta * c`.
    pub(crate) fn gemm_with(&mut self, a: &str, b: &str, c: &str, beta: f32) -> String {
        self.op("Gemm", &[a, b, c], vec![Attr::Float("beta", beta)])
    }

    /// Sum over one axis, dropping it.
    pub(crate) fn reduce_sum(&mut self, x: &str, axis: i64) -> String {
        let axes = self.const_i64(&[1], vec![axis]);
        self.op("ReduceSum", &[x, &axes], vec![Attr::Int("keepdims", 0)])
    }

    pub(crate) fn finish(self) -> ModelProto {
        ModelProto {
            ir_version: IR_VERSION,
            producer_name: "lossgate".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            graph: Some(self.graph),
            opset_import: vec![OperatorSetIdProto { domain: String::new(), version: OPSET }],
        }
    }
}

/// Serialises a model to the bytes ORT loads (and `.onnx` files hold).
pub(crate) fn encode(model: &ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}
