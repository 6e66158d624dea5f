//! The Open Inference Protocol's tensors on the wire: a JSON request whose inputs carry their
//! values in `data` (flat or nested, row-major), or — the binary tensor extension, which
//! `tritonclient` uses by default — a JSON header of `Inference-Header-Content-Length` bytes
//! followed by each input's raw little-endian values (`binary_data_size` bytes, in input order;
//! BYTES elements as a 4-byte length and the bytes). Responses mirror it.

use axum::body::Bytes;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::api::ApiError;

/// The header that gives the JSON part's length when binary data follows it.
pub const HEADER_LENGTH: &str = "inference-header-content-length";
/// The longest JSON part: parsed JSON takes several times its size in memory, so large tensors
/// must come as binary data.
pub const MAX_JSON_BYTES: usize = 16 * 1024 * 1024;

/// A tensor's values, by the kind of element.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    /// FP16, FP32 and FP64, as f32.
    Floats(Vec<f32>),
    /// BOOL and the integer types, as i64.
    Integers(Vec<i64>),
    Bytes(Vec<Vec<u8>>),
}

impl Values {
    fn len(&self) -> usize {
        match self {
            Self::Floats(v) => v.len(),
            Self::Integers(v) => v.len(),
            Self::Bytes(v) => v.len(),
        }
    }
}

/// An input of a request.
#[derive(Debug)]
pub struct Input {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<usize>,
    pub values: Values,
}

/// An output the caller asked for, and how.
#[derive(Debug, Clone)]
pub struct Wanted {
    pub name: String,
    pub binary: bool,
    /// Triton's classification extension: the top `k` classes as `score:index:label` strings.
    pub classification: Option<usize>,
}

/// A parsed inference request.
#[derive(Debug)]
pub struct InferRequest {
    pub id: Option<String>,
    pub parameters: Map<String, Value>,
    pub inputs: Vec<Input>,
    /// The outputs asked for; empty means all, each in `binary_by_default` form.
    pub outputs: Vec<Wanted>,
    pub binary_by_default: bool,
}

impl InferRequest {
    /// The input called `name`, if the request has it.
    pub fn input(&self, name: &str) -> Option<&Input> {
        self.inputs.iter().find(|input| input.name == name)
    }

    /// How the output `name` is to be returned, or `None` if the caller did not ask for it.
    pub fn wants(&self, name: &str) -> Option<Wanted> {
        if self.outputs.is_empty() {
            return Some(Wanted {
                name: name.to_string(),
                binary: self.binary_by_default,
                classification: None,
            });
        }
        self.outputs.iter().find(|o| o.name == name).cloned()
    }
}

/// A tensor of a response.
#[derive(Debug)]
pub struct Output {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Values,
    /// FP32, INT64 or BYTES: the datatype `values` are sent as.
    pub datatype: &'static str,
    pub binary: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestJson {
    id: Option<String>,
    #[serde(default)]
    parameters: Map<String, Value>,
    inputs: Vec<InputJson>,
    #[serde(default)]
    outputs: Vec<OutputJson>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InputJson {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Map<String, Value>,
    data: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OutputJson {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

/// Reads a request body, JSON or JSON plus binary tensors.
pub fn parse(headers: &HeaderMap, body: &Bytes) -> Result<InferRequest, ApiError> {
    let (head, mut binary) = match headers.get(HEADER_LENGTH) {
        Some(length) => {
            let length = (length.to_str().ok())
                .and_then(|l| l.trim().parse::<usize>().ok())
                .filter(|&l| l <= body.len())
                .ok_or_else(|| {
                    invalid(format!(
                        "{HEADER_LENGTH} must be the JSON header's length in bytes, at most the \
                         body's {}",
                        body.len()
                    ))
                })?;
            (&body[..length], &body[length..])
        }
        None => (&body[..], &body[body.len()..]),
    };
    if head.len() > MAX_JSON_BYTES {
        return Err(invalid(format!(
            "the JSON part of the request is {} bytes, over the limit of {MAX_JSON_BYTES}; send \
             large tensors as binary data (the binary tensor extension)",
            head.len()
        )));
    }
    let request: RequestJson = serde_json::from_slice(head)
        .map_err(|e| invalid(format!("invalid inference request JSON: {e}")))?;
    let mut inputs = Vec::with_capacity(request.inputs.len());
    for input in request.inputs {
        if inputs.iter().any(|i: &Input| i.name == input.name) {
            return Err(invalid(format!("input `{}` is given twice", input.name)));
        }
        inputs.push(read_input(input, &mut binary)?);
    }
    if !binary.is_empty() {
        return Err(invalid(format!(
            "{} bytes of binary data follow the inputs' binary_data_size",
            binary.len()
        )));
    }
    let binary_by_default = flag(&request.parameters, "binary_data_output")?;
    let outputs = (request.outputs.into_iter())
        .map(|output| {
            let classification = match output.parameters.get("classification") {
                None => None,
                Some(k) => Some(
                    (k.as_u64().filter(|&k| k >= 1))
                        .ok_or_else(|| invalid("`classification` must be a positive integer"))?
                        as usize,
                ),
            };
            let binary = match output.parameters.get("binary_data") {
                None => binary_by_default,
                Some(_) => flag(&output.parameters, "binary_data")?,
            };
            Ok(Wanted {
                binary,
                name: output.name,
                classification,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    Ok(InferRequest {
        id: request.id,
        parameters: request.parameters,
        inputs,
        outputs,
        binary_by_default,
    })
}

fn flag(parameters: &Map<String, Value>, name: &str) -> Result<bool, ApiError> {
    match parameters.get(name) {
        None => Ok(false),
        Some(Value::Bool(value)) => Ok(*value),
        Some(_) => Err(invalid(format!(
            "the parameter `{name}` must be true or false"
        ))),
    }
}

fn read_input(input: InputJson, binary: &mut &[u8]) -> Result<Input, ApiError> {
    let name = input.name;
    let shape: Vec<usize> = (input.shape.iter())
        .map(|&d| usize::try_from(d))
        .collect::<Result<_, _>>()
        .map_err(|_| {
            invalid(format!(
                "input `{name}`: shape dimensions must not be negative"
            ))
        })?;
    let elements = (shape.iter())
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| invalid(format!("input `{name}`: the shape {shape:?} is too large")))?;
    let kind = ElementKind::of(&input.datatype).ok_or_else(|| {
        invalid(format!(
            "input `{name}`: unknown datatype `{}` (BOOL, UINT8…UINT64, INT8…INT64, FP16, FP32, \
             FP64 or BYTES)",
            input.datatype
        ))
    })?;
    let values = match (input.parameters.get("binary_data_size"), input.data) {
        (Some(size), None) => {
            let size = (size.as_u64())
                .and_then(|s| usize::try_from(s).ok())
                .filter(|&s| s <= binary.len())
                .ok_or_else(|| {
                    invalid(format!(
                        "input `{name}`: binary_data_size must be a byte count within the {} \
                         bytes left in the body",
                        binary.len()
                    ))
                })?;
            let (bytes, rest) = binary.split_at(size);
            *binary = rest;
            kind.read_binary(bytes, elements)
                .map_err(|reason| invalid(format!("input `{name}`: {reason}")))?
        }
        (None, Some(data)) => {
            let mut flat = Vec::new();
            flatten(data, &mut flat);
            kind.read_json(flat)
                .map_err(|reason| invalid(format!("input `{name}`: {reason}")))?
        }
        (Some(_), Some(_)) => {
            return Err(invalid(format!(
                "input `{name}` has both `data` and binary_data_size"
            )))
        }
        (None, None) => return Err(invalid(format!("input `{name}` has no `data`"))),
    };
    if values.len() != elements {
        return Err(invalid(format!(
            "input `{name}` has {} elements but its shape {shape:?} holds {elements}",
            values.len()
        )));
    }
    Ok(Input {
        name,
        datatype: input.datatype,
        shape,
        values,
    })
}

/// Nested arrays in row-major order.
fn flatten(value: Value, out: &mut Vec<Value>) {
    match value {
        Value::Array(items) => items.into_iter().for_each(|item| flatten(item, out)),
        other => out.push(other),
    }
}

/// The element types of the protocol, by how they are read.
#[derive(Clone, Copy)]
enum ElementKind {
    Float { width: usize },
    Integer { width: usize, signed: bool },
    Bool,
    Bytes,
}

impl ElementKind {
    fn of(datatype: &str) -> Option<Self> {
        Some(match datatype {
            "BOOL" => Self::Bool,
            "UINT8" => Self::Integer {
                width: 1,
                signed: false,
            },
            "UINT16" => Self::Integer {
                width: 2,
                signed: false,
            },
            "UINT32" => Self::Integer {
                width: 4,
                signed: false,
            },
            "UINT64" => Self::Integer {
                width: 8,
                signed: false,
            },
            "INT8" => Self::Integer {
                width: 1,
                signed: true,
            },
            "INT16" => Self::Integer {
                width: 2,
                signed: true,
            },
            "INT32" => Self::Integer {
                width: 4,
                signed: true,
            },
            "INT64" => Self::Integer {
                width: 8,
                signed: true,
            },
            "FP16" => Self::Float { width: 2 },
            "FP32" => Self::Float { width: 4 },
            "FP64" => Self::Float { width: 8 },
            "BYTES" => Self::Bytes,
            _ => return None,
        })
    }

    fn read_json(self, data: Vec<Value>) -> Result<Values, String> {
        let wrong = |value: &Value, kind: &str| format!("`{value}` is not {kind}");
        Ok(match self {
            Self::Float { .. } => Values::Floats(
                (data.iter())
                    .map(|v| {
                        v.as_f64()
                            .map(|f| f as f32)
                            .ok_or_else(|| wrong(v, "a number"))
                    })
                    .collect::<Result<_, _>>()?,
            ),
            Self::Integer { .. } => Values::Integers(
                (data.iter())
                    .map(|v| v.as_i64().ok_or_else(|| wrong(v, "an integer")))
                    .collect::<Result<_, _>>()?,
            ),
            Self::Bool => Values::Integers(
                (data.iter())
                    .map(|v| {
                        v.as_bool()
                            .map(i64::from)
                            .ok_or_else(|| wrong(v, "true or false"))
                    })
                    .collect::<Result<_, _>>()?,
            ),
            Self::Bytes => Values::Bytes(
                (data.into_iter())
                    .map(|v| match v {
                        Value::String(s) => Ok(s.into_bytes()),
                        other => Err(wrong(&other, "a string")),
                    })
                    .collect::<Result<_, _>>()?,
            ),
        })
    }

    fn read_binary(self, bytes: &[u8], elements: usize) -> Result<Values, String> {
        if let Self::Bytes = self {
            return read_byte_strings(bytes).map(Values::Bytes);
        }
        let width = match self {
            Self::Float { width } | Self::Integer { width, .. } => width,
            Self::Bool | Self::Bytes => 1,
        };
        if elements.checked_mul(width) != Some(bytes.len()) {
            return Err(format!(
                "{} bytes of binary data for {elements} elements of {width} bytes",
                bytes.len()
            ));
        }
        let chunks = bytes.chunks_exact(width);
        Ok(match self {
            Self::Float { width: 2 } => Values::Floats(
                chunks
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
            ),
            Self::Float { width: 4 } => Values::Floats(
                chunks
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            ),
            Self::Float { .. } => Values::Floats(
                chunks
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32)
                    .collect(),
            ),
            Self::Integer { signed, .. } => Values::Integers(
                chunks
                    .map(|c| integer(c, signed))
                    .collect::<Result<_, _>>()?,
            ),
            Self::Bool | Self::Bytes => {
                Values::Integers(chunks.map(|c| i64::from(c[0] != 0)).collect())
            }
        })
    }
}

/// A little-endian integer of 1 to 8 bytes.
fn integer(bytes: &[u8], signed: bool) -> Result<i64, String> {
    let mut wide = [0u8; 8];
    wide[..bytes.len()].copy_from_slice(bytes);
    let negative = signed && bytes[bytes.len() - 1] & 0x80 != 0;
    if negative {
        wide[bytes.len()..].fill(0xff);
    }
    let value = i64::from_le_bytes(wide);
    if !signed && bytes.len() == 8 && value < 0 {
        return Err("a UINT64 value is beyond 2^63".into());
    }
    Ok(value)
}

/// BYTES elements: each a 4-byte little-endian length and that many bytes.
fn read_byte_strings(mut bytes: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut strings = Vec::new();
    while !bytes.is_empty() {
        let (length, rest) = (bytes.split_first_chunk::<4>())
            .ok_or("BYTES binary data ends inside an element's 4-byte length")?;
        let length = u32::from_le_bytes(*length) as usize;
        if length > rest.len() {
            return Err(format!(
                "a BYTES element of {length} bytes runs past the {} bytes left",
                rest.len()
            ));
        }
        strings.push(rest[..length].to_vec());
        bytes = &rest[length..];
    }
    Ok(strings)
}

/// The response: JSON, or JSON followed by the outputs asked for in binary.
pub fn respond(model: &str, id: Option<&str>, outputs: Vec<Output>) -> Response {
    let mut binary = Vec::new();
    let described: Vec<Value> = (outputs.into_iter())
        .map(|output| {
            let mut tensor = json!({
                "name": output.name,
                "datatype": output.datatype,
                "shape": output.shape,
            });
            if output.binary {
                let start = binary.len();
                write_binary(&output.values, &mut binary);
                tensor["parameters"] = json!({"binary_data_size": binary.len() - start});
            } else {
                tensor["data"] = match output.values {
                    Values::Floats(v) => json!(v),
                    Values::Integers(v) => json!(v),
                    Values::Bytes(v) => json!((v.into_iter())
                        .map(|b| String::from_utf8_lossy(&b).into_owned())
                        .collect::<Vec<_>>()),
                };
            }
            tensor
        })
        .collect();
    let mut body = json!({"model_name": model, "model_version": "1", "outputs": described});
    if let Some(id) = id {
        body["id"] = json!(id);
    }
    let mut head = serde_json::to_vec(&body).expect("JSON values serialize");
    if binary.is_empty() {
        return ([(header::CONTENT_TYPE, "application/json")], head).into_response();
    }
    let length = HeaderValue::from(head.len());
    head.extend_from_slice(&binary);
    let mut response = ([(header::CONTENT_TYPE, "application/octet-stream")], head).into_response();
    response.headers_mut().insert(HEADER_LENGTH, length);
    response
}

fn write_binary(values: &Values, out: &mut Vec<u8>) {
    match values {
        Values::Floats(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Values::Integers(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Values::Bytes(v) => v.iter().for_each(|b| {
            out.extend_from_slice(&(b.len() as u32).to_le_bytes());
            out.extend_from_slice(b);
        }),
    }
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::invalid("inputs", message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binary_request(json: &str, data: &[u8]) -> (HeaderMap, Bytes) {
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_LENGTH, HeaderValue::from(json.len()));
        let mut body = json.as_bytes().to_vec();
        body.extend_from_slice(data);
        (headers, Bytes::from(body))
    }

    #[test]
    fn json_data_may_be_nested_and_must_fill_the_shape() {
        let body = Bytes::from(
            r#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[[1,2],[3,4.5]]}]}"#,
        );
        let request = parse(&HeaderMap::new(), &body).unwrap();
        assert_eq!(
            request.inputs[0].values,
            Values::Floats(vec![1.0, 2.0, 3.0, 4.5])
        );
        let short = Bytes::from(
            r#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[1,2,3]}]}"#,
        );
        let error = parse(&HeaderMap::new(), &short).unwrap_err().to_string();
        assert!(
            error.contains("3 elements but its shape [2, 2] holds 4"),
            "{error}"
        );
    }

    #[test]
    fn binary_inputs_are_read_in_order_and_checked() {
        let json = r#"{"inputs":[
            {"name":"w","shape":[2],"datatype":"BYTES","parameters":{"binary_data_size":13}},
            {"name":"n","shape":[2],"datatype":"INT16","parameters":{"binary_data_size":4}}]}"#;
        let mut data = Vec::new();
        for word in ["hi", "you"] {
            data.extend_from_slice(&(word.len() as u32).to_le_bytes());
            data.extend_from_slice(word.as_bytes());
        }
        data.extend_from_slice(&(-2i16).to_le_bytes());
        data.extend_from_slice(&7i16.to_le_bytes());
        let (headers, body) = binary_request(json, &data);
        let request = parse(&headers, &body).unwrap();
        assert_eq!(
            request.inputs[0].values,
            Values::Bytes(vec![b"hi".to_vec(), b"you".to_vec()])
        );
        assert_eq!(request.inputs[1].values, Values::Integers(vec![-2, 7]));

        let (headers, body) = binary_request(json, &data[..data.len() - 1]);
        assert!(parse(&headers, &body).is_err(), "a short body is refused");
        let mut lying = data.clone();
        lying[0] = 200;
        let (headers, body) = binary_request(json, &lying);
        assert!(
            parse(&headers, &body).is_err(),
            "an element past its tensor is refused"
        );
    }

    #[test]
    fn unknown_datatypes_and_bad_header_lengths_are_refused() {
        let body =
            Bytes::from(r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP8","data":[1]}]}"#);
        assert!(parse(&HeaderMap::new(), &body).is_err());
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_LENGTH, HeaderValue::from(10_000));
        assert!(parse(&headers, &body).is_err());
    }
}
