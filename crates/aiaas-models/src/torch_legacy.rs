//! Reader of the checkpoints `torch.save` wrote before PyTorch 1.6 (the "legacy", non-zip
//! format): five records back to back,
//!
//! 1. a pickle of the magic number `0x1950a86a20f9469cfc6c`,
//! 2. a pickle of the protocol version, 1001,
//! 3. a pickle of system information (byte order, C type sizes),
//! 4. the pickle of the saved object, whose storages are persistent ids
//!    `('storage', torch.FloatStorage, key, location, size)` and whose tensors are
//!    `torch._utils._rebuild_tensor_v2(storage, offset, shape, strides, …)` calls,
//! 5. a pickle of the list of storage keys, then each of those storages in that order as an
//!    `i64` little-endian element count followed by the raw little-endian elements.
//!
//! The files are untrusted, so the pickles run on a small virtual machine of our own: it knows
//! the opcodes `torch.save` emits, refuses every global but a handful it interprets itself
//! (`collections.OrderedDict`, the two tensor rebuilders and the storage types) and calls
//! nothing. Every read is bounded by the file; no count is trusted before it has been checked
//! against the bytes left. Reference: `torch/serialization.py` (`_legacy_save`, `_legacy_load`)
//! and Python's `pickletools`.

use std::collections::HashMap;
use std::path::Path;

use half::{bf16, f16};

use crate::{ModelError, Result};

/// The first pickle of every legacy checkpoint.
const MAGIC_NUMBER: i128 = 0x1950_a86a_20f9_469c_fc6c;
/// The second one.
const PROTOCOL_VERSION: i128 = 1001;

/// A tensor of the checkpoint, its elements converted to f32 (integer and boolean tensors too,
/// such as batch norm's `num_batches_tracked`) and laid out row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// The named tensors of a state dict, in the file's order.
#[derive(Debug, Default)]
pub struct StateDict {
    tensors: Vec<(String, Tensor)>,
}

impl StateDict {
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.tensors.iter().map(|(n, t)| (n.as_str(), t))
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }
}

/// Reads the state dict saved in a legacy checkpoint: the saved object itself, or its
/// `state_dict` entry (training scripts often save `{"state_dict": …, "epoch": …}`).
pub fn read(path: &Path) -> Result<StateDict> {
    let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
        path: path.display().to_string(),
        source,
    })?;
    parse(&bytes).map_err(|e| match e {
        ModelError::Format(message) => ModelError::Format(format!("{}: {message}", path.display())),
        other => other,
    })
}

/// `read` on the bytes of a file.
pub fn parse(bytes: &[u8]) -> Result<StateDict> {
    if bytes.starts_with(b"PK\x03\x04") {
        return Err(format_error(
            "a zip-format PyTorch checkpoint (PyTorch 1.6 or later); only the legacy format is read",
        ));
    }
    let mut input = Input { bytes, position: 0 };
    let mut storages = Storages::default();
    let magic = Machine::run(&mut input, &mut storages)?;
    if magic.int(magic.root) != Some(MAGIC_NUMBER) {
        return Err(format_error(
            "not a legacy PyTorch checkpoint (no magic number)",
        ));
    }
    let protocol = Machine::run(&mut input, &mut storages)?;
    if protocol.int(protocol.root) != Some(PROTOCOL_VERSION) {
        return Err(format_error("unsupported legacy PyTorch protocol version"));
    }
    let system = Machine::run(&mut input, &mut storages)?;
    if system.entry(system.root, "little_endian") == Some(Value::Bool(false)) {
        return Err(format_error("saved on a big-endian machine"));
    }
    let saved = Machine::run(&mut input, &mut storages)?;
    let keys = Machine::run(&mut input, &mut storages)?;
    let Some(Object::List(keys_list)) = keys.object(keys.root) else {
        return Err(format_error("the storage key list is not a list"));
    };
    for &key in keys_list {
        let key = keys
            .string(key)
            .ok_or_else(|| format_error("a storage key is not a string"))?;
        storages.read_data(key, &mut input)?;
    }
    let mut root = saved.root;
    if let Some(inner) = saved.entry(root, "state_dict") {
        root = inner;
    }
    let Some(Object::Dict(entries)) = saved.object(root) else {
        return Err(format_error("the saved object is not a state dict"));
    };
    let mut tensors: Vec<(String, Tensor)> = Vec::with_capacity(entries.len());
    let mut names = std::collections::HashSet::new();
    // Views may share a storage (a tied weight), but a crafted file could view one large storage
    // from thousands of names: what is copied out is bounded by twice what the file holds.
    let stored: usize = storages.declared.iter().map(|s| s.elements).sum();
    let mut budget = stored.saturating_mul(2);
    for &(name, value) in entries {
        // Anything else a state dict may hold (extra state, numbers) is not a tensor to load.
        let (Some(name), Some(Object::Tensor(view))) = (saved.string(name), saved.object(value))
        else {
            continue;
        };
        if !names.insert(name) {
            return Err(format_error(format!("tensor `{name}` appears twice")));
        }
        let elements = (view.shape.iter()).try_fold(1usize, |n, &d| n.checked_mul(d));
        budget = (elements.and_then(|n| budget.checked_sub(n)))
            .ok_or_else(|| format_error("the tensors view their storages more than twice over"))?;
        let tensor = storages
            .materialize(view)
            .map_err(|e| format_error(format!("tensor `{name}`: {e}")))?;
        tensors.push((name.to_string(), tensor));
    }
    Ok(StateDict { tensors })
}

fn format_error(message: impl Into<String>) -> ModelError {
    ModelError::Format(format!("legacy PyTorch checkpoint: {}", message.into()))
}

/// The bytes of the file and the read position.
struct Input<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Input<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.position
    }

    fn take(&mut self, count: usize) -> Result<&'a [u8]> {
        if count > self.remaining() {
            return Err(format_error(format!(
                "truncated: {count} bytes needed at byte {}, {} left",
                self.position,
                self.remaining()
            )));
        }
        let taken = &self.bytes[self.position..self.position + count];
        self.position += count;
        Ok(taken)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut array = [0; N];
        array.copy_from_slice(self.take(N)?);
        Ok(array)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn i32(&mut self) -> Result<i32> {
        Ok(i32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A length prefix, checked against the bytes left before anything is allocated for it.
    fn length(&mut self, length: u64) -> Result<usize> {
        match usize::try_from(length) {
            Ok(length) if length <= self.remaining() => Ok(length),
            _ => Err(format_error(format!(
                "truncated: a length of {length} at byte {}, {} bytes left",
                self.position,
                self.remaining()
            ))),
        }
    }

    /// The text up to the next newline (GLOBAL's module and name).
    fn line(&mut self) -> Result<&'a str> {
        let rest = &self.bytes[self.position..];
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| format_error("truncated: a line without its end"))?;
        let line = std::str::from_utf8(&rest[..end]).map_err(|_| {
            format_error(format!(
                "a name that is not UTF-8 at byte {}",
                self.position
            ))
        })?;
        self.position += end + 1;
        Ok(line)
    }
}

/// A pickle value: scalars inline, everything else an index into the machine's objects (so
/// that the memo and the stack share containers as Python's do, and a memoized value fetched
/// many times costs nothing).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Value {
    None,
    Bool(bool),
    Int(i128),
    /// No float of a checkpoint is needed, so its value is not kept.
    Float,
    Object(usize),
}

#[derive(Debug)]
enum Object {
    Str(String),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(Global),
    /// An index into `Storages::declared`.
    Storage(usize),
    Tensor(View),
}

/// The only globals a checkpoint may name.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Global {
    OrderedDict,
    RebuildTensor,
    RebuildParameter,
    Storage(Kind),
}

impl Global {
    fn find(module: &str, name: &str) -> Result<Self> {
        match (module, name) {
            ("collections", "OrderedDict") => Ok(Self::OrderedDict),
            ("torch._utils", "_rebuild_tensor_v2") => Ok(Self::RebuildTensor),
            ("torch._utils", "_rebuild_parameter") => Ok(Self::RebuildParameter),
            ("torch", storage) => Kind::from_name(storage)
                .map(Self::Storage)
                .ok_or_else(|| format_error(format!("refusing the global `torch.{storage}`"))),
            _ => Err(format_error(format!(
                "refusing the global `{module}.{name}` (not part of a state dict)"
            ))),
        }
    }
}

/// Element types of storages.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Float,
    Double,
    Half,
    BFloat16,
    Long,
    Int,
    Short,
    Char,
    Byte,
    Bool,
}

impl Kind {
    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "FloatStorage" => Self::Float,
            "DoubleStorage" => Self::Double,
            "HalfStorage" => Self::Half,
            "BFloat16Storage" => Self::BFloat16,
            "LongStorage" => Self::Long,
            "IntStorage" => Self::Int,
            "ShortStorage" => Self::Short,
            "CharStorage" => Self::Char,
            "ByteStorage" => Self::Byte,
            "BoolStorage" => Self::Bool,
            _ => return None,
        })
    }

    fn size(self) -> usize {
        match self {
            Self::Double | Self::Long => 8,
            Self::Float | Self::Int => 4,
            Self::Half | Self::BFloat16 | Self::Short => 2,
            Self::Char | Self::Byte | Self::Bool => 1,
        }
    }

    /// One little-endian element (of `self.size()` bytes) as f32.
    fn decode(self, bytes: &[u8]) -> f32 {
        let mut all = [0u8; 8];
        let n = bytes.len().min(8);
        all[..n].copy_from_slice(&bytes[..n]);
        let [b0, b1, b2, b3, ..] = all;
        match self {
            Self::Float => f32::from_le_bytes([b0, b1, b2, b3]),
            Self::Double => f64::from_le_bytes(all) as f32,
            Self::Half => f16::from_le_bytes([b0, b1]).to_f32(),
            Self::BFloat16 => bf16::from_le_bytes([b0, b1]).to_f32(),
            Self::Long => i64::from_le_bytes(all) as f32,
            Self::Int => i32::from_le_bytes([b0, b1, b2, b3]) as f32,
            Self::Short => f32::from(i16::from_le_bytes([b0, b1])),
            Self::Char => f32::from(i8::from_le_bytes([b0])),
            Self::Byte => f32::from(b0),
            Self::Bool => f32::from(u8::from(b0 != 0)),
        }
    }
}

/// `_rebuild_tensor_v2`'s arguments: a strided view of a storage.
#[derive(Debug, Clone)]
struct View {
    storage: usize,
    offset: usize,
    shape: Vec<usize>,
    strides: Vec<usize>,
}

/// A storage the saved object refers to, and its elements once read.
#[derive(Debug)]
struct Storage {
    key: String,
    kind: Kind,
    elements: usize,
    values: Option<Vec<f32>>,
}

/// The storages of the checkpoint, declared by persistent ids in the saved object's pickle and
/// read from the data records after it.
#[derive(Debug, Default)]
struct Storages {
    declared: Vec<Storage>,
    by_key: HashMap<String, usize>,
}

impl Storages {
    /// The index of the storage a persistent id names, declaring it the first time.
    fn declare(&mut self, key: &str, kind: Kind, elements: usize) -> Result<usize> {
        if let Some(&index) = self.by_key.get(key) {
            let known = &self.declared[index];
            if known.kind != kind || known.elements != elements {
                return Err(format_error(format!(
                    "storage {key} is declared twice, differently"
                )));
            }
            return Ok(index);
        }
        self.declared.push(Storage {
            key: key.to_string(),
            kind,
            elements,
            values: None,
        });
        self.by_key.insert(key.to_string(), self.declared.len() - 1);
        Ok(self.declared.len() - 1)
    }

    /// Reads the data record of storage `key`: its element count, then its elements.
    fn read_data(&mut self, key: &str, input: &mut Input) -> Result<()> {
        let index = *self
            .by_key
            .get(key)
            .ok_or_else(|| format_error(format!("data for storage {key}, which no tensor uses")))?;
        let storage = &mut self.declared[index];
        if storage.values.is_some() {
            return Err(format_error(format!("storage {key} has two data records")));
        }
        let count = input.u64()?;
        if usize::try_from(count).ok() != Some(storage.elements) {
            return Err(format_error(format!(
                "storage {key} declares {} elements, its data record {count}",
                storage.elements
            )));
        }
        let size = storage.kind.size();
        let bytes = input.take(
            storage
                .elements
                .checked_mul(size)
                .ok_or_else(|| format_error(format!("storage {key} is too large")))?,
        )?;
        storage.values = Some(
            bytes
                .chunks_exact(size)
                .map(|e| storage.kind.decode(e))
                .collect(),
        );
        Ok(())
    }

    /// The elements a view selects, row-major. Views are refused when they reach outside
    /// their storage or hold more elements than it (broadcast views would let a small file
    /// ask for unbounded memory).
    fn materialize(&self, view: &View) -> std::result::Result<Tensor, String> {
        let storage = &self.declared[view.storage];
        let values = storage
            .values
            .as_deref()
            .ok_or_else(|| format!("storage {} has no data record", storage.key))?;
        let count = view
            .shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .filter(|&n| n <= values.len() || n == 0)
            .ok_or_else(|| {
                format!(
                    "shape {:?} holds more elements than its storage's {}",
                    view.shape,
                    values.len()
                )
            })?;
        let shape = view.shape.clone();
        if count == 0 {
            return Ok(Tensor {
                shape,
                values: Vec::new(),
            });
        }
        view.shape
            .iter()
            .zip(&view.strides)
            .try_fold(view.offset, |end, (&d, &s)| {
                (d - 1).checked_mul(s).and_then(|span| end.checked_add(span))
            })
            .filter(|&last| last < values.len())
            .ok_or_else(|| {
                format!(
                    "offset {}, shape {:?} and strides {:?} reach outside the {} elements of its storage",
                    view.offset,
                    view.shape,
                    view.strides,
                    values.len()
                )
            })?;
        // The stride of a dimension of size 1 is never followed: it may be anything.
        let strides: Vec<usize> = (shape.iter().zip(&view.strides))
            .map(|(&d, &s)| if d == 1 { 0 } else { s })
            .collect();
        // An odometer over the indices, last dimension fastest.
        let mut out = Vec::with_capacity(count);
        let mut index = vec![0usize; shape.len()];
        let mut position = view.offset;
        for _ in 0..count {
            out.push(values[position]);
            for dim in (0..shape.len()).rev() {
                index[dim] += 1;
                position += strides[dim];
                if index[dim] < shape[dim] {
                    break;
                }
                position -= shape[dim] * strides[dim];
                index[dim] = 0;
            }
        }
        Ok(Tensor { shape, values: out })
    }
}

/// The pickle machine: one pickle's stack, marks, memo and objects.
struct Machine {
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    objects: Vec<Object>,
}

/// A pickle's result: its root value and the objects it refers to.
struct Pickle {
    root: Value,
    objects: Vec<Object>,
}

impl Pickle {
    fn object(&self, value: Value) -> Option<&Object> {
        match value {
            Value::Object(index) => self.objects.get(index),
            _ => None,
        }
    }

    fn string(&self, value: Value) -> Option<&str> {
        match self.object(value) {
            Some(Object::Str(s)) => Some(s),
            _ => None,
        }
    }

    fn int(&self, value: Value) -> Option<i128> {
        match value {
            Value::Int(i) => Some(i),
            _ => None,
        }
    }

    /// The value of a dict's string key.
    fn entry(&self, dict: Value, key: &str) -> Option<Value> {
        match self.object(dict) {
            Some(Object::Dict(entries)) => entries
                .iter()
                .find(|(k, _)| self.string(*k) == Some(key))
                .map(|&(_, v)| v),
            _ => None,
        }
    }
}

impl Machine {
    /// Runs one pickle from the input's position to its STOP.
    fn run(input: &mut Input, storages: &mut Storages) -> Result<Pickle> {
        let mut machine = Machine {
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            objects: Vec::new(),
        };
        loop {
            let at = input.position;
            let opcode = input.u8()?;
            if opcode == b'.' {
                let root = machine.pop()?;
                return Ok(Pickle {
                    root,
                    objects: machine.objects,
                });
            }
            machine.step(opcode, input, storages).map_err(|e| match e {
                ModelError::Format(m) => ModelError::Format(format!("{m} (opcode at byte {at})")),
                other => other,
            })?;
        }
    }

    fn new_object(&mut self, object: Object) -> Value {
        self.objects.push(object);
        Value::Object(self.objects.len() - 1)
    }

    fn push_object(&mut self, object: Object) {
        let value = self.new_object(object);
        self.stack.push(value);
    }

    fn pop(&mut self) -> Result<Value> {
        if self
            .marks
            .last()
            .is_some_and(|&mark| mark >= self.stack.len())
        {
            return Err(format_error("pop past a mark"));
        }
        self.stack
            .pop()
            .ok_or_else(|| format_error("pop from an empty stack"))
    }

    fn top(&self) -> Result<Value> {
        self.stack
            .last()
            .copied()
            .ok_or_else(|| format_error("empty stack"))
    }

    /// The values pushed since the last mark, which is removed.
    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let mark = self
            .marks
            .pop()
            .ok_or_else(|| format_error("no mark to pop to"))?;
        Ok(self.stack.split_off(mark))
    }

    fn pop_many(&mut self, count: usize) -> Result<Vec<Value>> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() < floor + count {
            return Err(format_error("too few values on the stack"));
        }
        Ok(self.stack.split_off(self.stack.len() - count))
    }

    fn get_object(&self, value: Value) -> Option<&Object> {
        match value {
            Value::Object(index) => self.objects.get(index),
            _ => None,
        }
    }

    fn string(&self, value: Value) -> Result<&str> {
        match self.get_object(value) {
            Some(Object::Str(s)) => Ok(s),
            _ => Err(format_error("expected a string")),
        }
    }

    fn usize(value: Value) -> Result<usize> {
        match value {
            Value::Int(i) => {
                usize::try_from(i).map_err(|_| format_error(format!("{i} is not a size")))
            }
            _ => Err(format_error("expected an integer")),
        }
    }

    fn sizes(&self, value: Value) -> Result<Vec<usize>> {
        match self.get_object(value) {
            Some(Object::Tuple(items)) => items.iter().map(|&v| Self::usize(v)).collect(),
            _ => Err(format_error("expected a tuple of sizes")),
        }
    }

    fn memoize(&mut self, key: u32) -> Result<()> {
        let top = self.top()?;
        self.memo.insert(key, top);
        Ok(())
    }

    fn recall(&mut self, key: u32) -> Result<()> {
        let value = *self
            .memo
            .get(&key)
            .ok_or_else(|| format_error(format!("memo entry {key} is missing")))?;
        self.stack.push(value);
        Ok(())
    }

    fn push_string(&mut self, bytes: &[u8]) -> Result<()> {
        let text =
            std::str::from_utf8(bytes).map_err(|_| format_error("a string that is not UTF-8"))?;
        self.push_object(Object::Str(text.to_string()));
        Ok(())
    }

    /// A little-endian two's-complement integer of up to 16 bytes (LONG1, LONG4).
    fn push_long(&mut self, bytes: &[u8]) -> Result<()> {
        if bytes.len() > 16 {
            return Err(format_error("an integer too large to be a size"));
        }
        let negative = bytes.last().is_some_and(|&b| b & 0x80 != 0);
        let mut array = [if negative { 0xFF } else { 0 }; 16];
        array[..bytes.len()].copy_from_slice(bytes);
        self.stack.push(Value::Int(i128::from_le_bytes(array)));
        Ok(())
    }

    /// The object on top of the stack, to add items to.
    fn container(&mut self) -> Option<&mut Object> {
        match self.stack.last() {
            Some(&Value::Object(index)) => self.objects.get_mut(index),
            _ => None,
        }
    }

    /// Adds key-value pairs to the dict below them on the stack.
    fn set_items(&mut self, items: &[Value]) -> Result<()> {
        if !items.len().is_multiple_of(2) {
            return Err(format_error("a dict item without its value"));
        }
        match self.container() {
            Some(Object::Dict(entries)) => {
                entries.extend(items.chunks_exact(2).map(|kv| (kv[0], kv[1])));
                Ok(())
            }
            _ => Err(format_error("items set on something that is not a dict")),
        }
    }

    /// Appends values to the list below them on the stack.
    fn append(&mut self, items: &[Value]) -> Result<()> {
        match self.container() {
            Some(Object::List(list)) => {
                list.extend_from_slice(items);
                Ok(())
            }
            _ => Err(format_error("append to something that is not a list")),
        }
    }

    /// REDUCE: the call of a whitelisted global, interpreted rather than executed.
    fn reduce(&mut self) -> Result<()> {
        let arguments = self.pop()?;
        let callable = self.pop()?;
        let Some(Object::Tuple(arguments)) = self.get_object(arguments) else {
            return Err(format_error("call arguments are not a tuple"));
        };
        let arguments = arguments.clone();
        let result = match self.get_object(callable) {
            Some(Object::Global(Global::OrderedDict)) if arguments.is_empty() => {
                self.new_object(Object::Dict(Vec::new()))
            }
            Some(Object::Global(Global::RebuildTensor)) if arguments.len() >= 4 => {
                let storage = match self.get_object(arguments[0]) {
                    Some(&Object::Storage(index)) => index,
                    _ => return Err(format_error("a tensor without a storage")),
                };
                let view = View {
                    storage,
                    offset: Self::usize(arguments[1])?,
                    shape: self.sizes(arguments[2])?,
                    strides: self.sizes(arguments[3])?,
                };
                if view.shape.len() != view.strides.len() {
                    return Err(format_error("a tensor's shape and strides differ in rank"));
                }
                self.new_object(Object::Tensor(view))
            }
            Some(Object::Global(Global::RebuildParameter)) if !arguments.is_empty() => {
                match self.get_object(arguments[0]) {
                    Some(Object::Tensor(_)) => arguments[0],
                    _ => return Err(format_error("a parameter without a tensor")),
                }
            }
            _ => return Err(format_error("a call this reader does not interpret")),
        };
        self.stack.push(result);
        Ok(())
    }

    /// BINPERSID: a storage reference `('storage', type, key, location, size)`.
    fn persistent_load(&mut self, storages: &mut Storages) -> Result<()> {
        let id = self.pop()?;
        let Some(Object::Tuple(fields)) = self.get_object(id) else {
            return Err(format_error("a persistent id that is not a tuple"));
        };
        let fields = fields.clone();
        if fields.len() < 5 || self.string(fields[0])? != "storage" {
            return Err(format_error("a persistent id that is not a storage"));
        }
        let Some(&Object::Global(Global::Storage(kind))) = self.get_object(fields[1]) else {
            return Err(format_error("a storage of unknown type"));
        };
        let key = self.string(fields[2])?.to_string();
        let index = storages.declare(&key, kind, Self::usize(fields[4])?)?;
        self.push_object(Object::Storage(index));
        Ok(())
    }

    fn step(&mut self, opcode: u8, input: &mut Input, storages: &mut Storages) -> Result<()> {
        match opcode {
            // PROTO: any version; only the opcodes matter.
            0x80 => {
                input.u8()?;
            }
            // FRAME: a length hint.
            0x95 => {
                input.u64()?;
            }
            b'(' => self.marks.push(self.stack.len()),
            b'0' => {
                self.pop()?;
            }
            b'1' => {
                self.pop_mark()?;
            }
            b'2' => {
                let top = self.top()?;
                self.stack.push(top);
            }
            b'N' => self.stack.push(Value::None),
            0x88 => self.stack.push(Value::Bool(true)),
            0x89 => self.stack.push(Value::Bool(false)),
            b'J' => self.stack.push(Value::Int(input.i32()?.into())),
            b'K' => self.stack.push(Value::Int(input.u8()?.into())),
            b'M' => self.stack.push(Value::Int(input.u16()?.into())),
            // LONG1, LONG4
            0x8a => {
                let length = input.u8()?;
                let bytes = input.take(length.into())?;
                self.push_long(bytes)?;
            }
            0x8b => {
                let length = input.u32()?;
                let length = input.length(length.into())?;
                let bytes = input.take(length)?;
                self.push_long(bytes)?;
            }
            b'G' => {
                input.u64()?;
                self.stack.push(Value::Float);
            }
            // SHORT_BINUNICODE, BINUNICODE, BINUNICODE8, and Python 2's SHORT_BINSTRING and
            // BINSTRING (ASCII names in old checkpoints).
            0x8c | b'U' => {
                let length = input.u8()?;
                let bytes = input.take(length.into())?;
                self.push_string(bytes)?;
            }
            b'X' | b'T' => {
                let length = input.u32()?;
                let length = input.length(length.into())?;
                let bytes = input.take(length)?;
                self.push_string(bytes)?;
            }
            0x8d => {
                let length = input.u64()?;
                let length = input.length(length)?;
                let bytes = input.take(length)?;
                self.push_string(bytes)?;
            }
            b')' => self.push_object(Object::Tuple(Vec::new())),
            b't' => {
                let items = self.pop_mark()?;
                self.push_object(Object::Tuple(items));
            }
            0x85..=0x87 => {
                let items = self.pop_many(usize::from(opcode - 0x84))?;
                self.push_object(Object::Tuple(items));
            }
            b']' => self.push_object(Object::List(Vec::new())),
            b'l' => {
                let items = self.pop_mark()?;
                self.push_object(Object::List(items));
            }
            b'a' => {
                let item = self.pop()?;
                self.append(&[item])?;
            }
            b'e' => {
                let items = self.pop_mark()?;
                self.append(&items)?;
            }
            b'}' => self.push_object(Object::Dict(Vec::new())),
            b'd' => {
                let items = self.pop_mark()?;
                self.push_object(Object::Dict(Vec::new()));
                self.set_items(&items)?;
            }
            b's' => {
                let items = self.pop_many(2)?;
                self.set_items(&items)?;
            }
            b'u' => {
                let items = self.pop_mark()?;
                self.set_items(&items)?;
            }
            b'q' => {
                let key = input.u8()?;
                self.memoize(key.into())?;
            }
            b'r' => {
                let key = input.u32()?;
                self.memoize(key)?;
            }
            // MEMOIZE: the next free memo index.
            0x94 => {
                let key =
                    u32::try_from(self.memo.len()).map_err(|_| format_error("memo overflow"))?;
                self.memoize(key)?;
            }
            b'h' => {
                let key = input.u8()?;
                self.recall(key.into())?;
            }
            b'j' => {
                let key = input.u32()?;
                self.recall(key)?;
            }
            b'c' => {
                let module = input.line()?;
                let name = input.line()?;
                let global = Global::find(module, name)?;
                self.push_object(Object::Global(global));
            }
            // STACK_GLOBAL
            0x93 => {
                let name = self.pop()?;
                let module = self.pop()?;
                let global = Global::find(self.string(module)?, self.string(name)?)?;
                self.push_object(Object::Global(global));
            }
            b'R' => self.reduce()?,
            b'Q' => self.persistent_load(storages)?,
            // BUILD: state set on an object (an OrderedDict's `_metadata`, a parameter's
            // hooks); none of it is needed to read tensors, so it is dropped.
            b'b' => {
                self.pop()?;
                self.top()?;
            }
            _ => {
                return Err(format_error(format!(
                    "unsupported pickle opcode 0x{opcode:02x}"
                )))
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pickle bytes, written as `torch.save` writes them.
    #[derive(Default)]
    struct Writer(Vec<u8>);

    impl Writer {
        fn op(&mut self, bytes: &[u8]) -> &mut Self {
            self.0.extend_from_slice(bytes);
            self
        }

        fn string(&mut self, s: &str) -> &mut Self {
            self.op(b"X")
                .op(&u32::try_from(s.len()).unwrap().to_le_bytes())
                .op(s.as_bytes())
        }

        fn int(&mut self, i: u16) -> &mut Self {
            self.op(b"M").op(&i.to_le_bytes())
        }

        fn sizes(&mut self, sizes: &[u16]) -> &mut Self {
            self.op(b"(");
            for &s in sizes {
                self.int(s);
            }
            self.op(b"t")
        }

        /// `name: _rebuild_tensor_v2(storage, offset, shape, strides, False, OrderedDict())`.
        fn tensor(
            &mut self,
            name: &str,
            storage: (&str, &str, u16),
            offset: u16,
            shape: &[u16],
            strides: &[u16],
        ) -> &mut Self {
            self.string(name)
                .op(b"ctorch._utils\n_rebuild_tensor_v2\n(")
                .op(b"(")
                .string("storage")
                .op(format!("ctorch\n{}\n", storage.0).as_bytes())
                .string(storage.1)
                .string("cpu")
                .int(storage.2)
                .op(b"NtQ")
                .int(offset)
                .sizes(shape)
                .sizes(strides)
                .op(b"\x89ccollections\nOrderedDict\n)RtR")
        }
    }

    /// The first three records of every legacy checkpoint.
    fn header() -> Writer {
        let mut w = Writer::default();
        w.op(b"\x80\x02\x8a\x0a")
            .op(&MAGIC_NUMBER.to_le_bytes()[..10])
            .op(b".\x80\x02")
            .int(1001)
            .op(b".\x80\x02}(")
            .string("little_endian")
            .op(b"\x88u.");
        w
    }

    /// A checkpoint of a transposed 2×3 float view (offset 1 in a storage of 7) and a half
    /// vector; `count` is the element count written before the float storage's data.
    fn checkpoint(count: u64) -> Vec<u8> {
        let mut w = header();
        w.op(b"\x80\x02ccollections\nOrderedDict\n)Rq\x00(")
            .tensor("weight", ("FloatStorage", "10", 7), 1, &[2, 3], &[1, 2])
            .tensor("bias", ("HalfStorage", "11", 2), 0, &[2], &[1])
            .op(b"u}bq\x01.");
        w.op(b"\x80\x02]q\x00(").string("10").string("11").op(b"e.");
        w.op(&count.to_le_bytes());
        for v in 0..7u8 {
            w.op(&f32::from(v).to_le_bytes());
        }
        w.op(&2u64.to_le_bytes());
        w.op(&f16::from_f32(0.5).to_le_bytes())
            .op(&f16::from_f32(-2.0).to_le_bytes());
        w.0
    }

    fn error(bytes: &[u8]) -> String {
        parse(bytes).unwrap_err().to_string()
    }

    #[test]
    fn reads_strided_views_and_half_storages() {
        let dict = parse(&checkpoint(7)).unwrap();
        assert_eq!(dict.len(), 2);
        // Storage 0..7, offset 1, strides (1, 2): rows [1, 3, 5] and [2, 4, 6].
        let weight = dict.get("weight").unwrap();
        assert_eq!(weight.shape, [2, 3]);
        assert_eq!(weight.values, [1.0, 3.0, 5.0, 2.0, 4.0, 6.0]);
        assert_eq!(dict.get("bias").unwrap().values, [0.5, -2.0]);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = checkpoint(7);
        for length in 0..bytes.len() {
            assert!(parse(&bytes[..length]).is_err(), "length {length}");
        }
    }

    #[test]
    fn a_huge_element_count_is_refused_before_allocating() {
        let message = error(&checkpoint(u64::MAX / 2));
        assert!(message.contains("declares 7 elements"), "{message}");
    }

    #[test]
    fn storages_larger_than_the_file_are_refused_before_allocating() {
        let mut w = header();
        w.op(b"\x80\x02}(")
            .tensor("w", ("FloatStorage", "0", 60000), 0, &[1], &[1])
            .op(b"u.\x80\x02]q\x00(")
            .string("0")
            .op(b"e.")
            .op(&60000u64.to_le_bytes());
        let message = error(&w.0);
        assert!(
            message.contains("truncated: 240000 bytes needed"),
            "{message}"
        );
    }

    #[test]
    fn unknown_opcodes_are_refused() {
        let mut bytes = header().0;
        bytes.extend_from_slice(b"\x80\x02\xff.");
        let message = error(&bytes);
        assert!(
            message.contains("unsupported pickle opcode 0xff"),
            "{message}"
        );
    }

    #[test]
    fn globals_outside_the_whitelist_are_refused() {
        let mut bytes = header().0;
        bytes.extend_from_slice(b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00lsR.");
        let message = error(&bytes);
        assert!(
            message.contains("refusing the global `os.system`"),
            "{message}"
        );
    }

    #[test]
    fn views_outside_their_storage_are_refused() {
        let mut w = header();
        w.op(b"\x80\x02}(")
            .tensor("w", ("FloatStorage", "0", 2), 1, &[2], &[1])
            .op(b"u.\x80\x02]q\x00(")
            .string("0")
            .op(b"e.")
            .op(&2u64.to_le_bytes())
            .op(&[0; 8]);
        let message = error(&w.0);
        assert!(message.contains("reach outside"), "{message}");
    }

    #[test]
    fn large_string_lengths_are_refused() {
        let mut bytes = header().0;
        bytes.extend_from_slice(b"\x80\x02X\xff\xff\xff\xff.");
        let message = error(&bytes);
        assert!(message.contains("truncated"), "{message}");
    }

    #[test]
    fn other_files_are_refused_clearly() {
        assert!(error(b"PK\x03\x04rest").contains("zip-format"));
        assert!(error(b"\x80\x02K\x01.").contains("no magic number"));
        assert!(error(b"").contains("truncated"));
    }
}
