//! An encrypted qcow2 chain (overlay → backing → …), each layer with its
//! own key, and the nested `blockdev-add` JSON that opens it.
//!
//! The same JSON serves QMP (`blockdev-add`) and qemu-img (as a `json:`
//! filename), so both open a chain the same way: every layer names its own
//! secret, and the bottom layer has `backing: null` so a backing file
//! recorded in an image header is never followed behind our back.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::key::DiskKey;

/// One qcow2 file of a chain and the key of its LUKS payload.
#[derive(Debug, Clone)]
pub struct Layer {
    pub path: PathBuf,
    pub key: DiskKey,
}

impl Layer {
    pub fn new(path: impl Into<PathBuf>, key: DiskKey) -> Self {
        Layer {
            path: path.into(),
            key,
        }
    }
}

/// Layers from the top (the file written to) down to the base image.
#[derive(Debug, Clone)]
pub struct Chain {
    layers: Vec<Layer>,
}

impl Chain {
    /// A chain of `layers`, top first; at least one.
    pub fn new(layers: Vec<Layer>) -> Result<Self> {
        if layers.is_empty() {
            return Err(Error::invalid("chain", "a chain needs at least one layer"));
        }
        for l in &layers {
            check_path(&l.path)?;
        }
        Ok(Chain { layers })
    }

    /// A chain of one standalone file.
    pub fn single(path: impl Into<PathBuf>, key: DiskKey) -> Result<Self> {
        Chain::new(vec![Layer::new(path, key)])
    }

    /// This chain with `layer` put on top.
    pub fn with_top(&self, layer: Layer) -> Result<Self> {
        let mut layers = vec![layer];
        layers.extend(self.layers.iter().cloned());
        Chain::new(layers)
    }

    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    pub fn top(&self) -> &Layer {
        &self.layers[0]
    }

    /// The id of the secret object of layer `i` under `prefix`.
    pub fn secret_id(prefix: &str, i: usize) -> String {
        format!("{prefix}.k{i}")
    }

    /// The node name of layer `i` under `prefix` (its file node adds `f`).
    pub fn node_name(prefix: &str, i: usize) -> String {
        format!("{prefix}.l{i}")
    }

    /// The nested blockdev options opening the chain. Node names are
    /// `<prefix>.l<i>` (file nodes `<prefix>.l<i>f`), secrets
    /// `<prefix>.k<i>`; with `node_names: false` (qemu-img) none are set.
    pub fn blockdev(&self, prefix: &str, node_names: bool) -> Value {
        let mut below = Value::Null;
        for (i, layer) in self.layers.iter().enumerate().rev() {
            let mut file = json!({
                "driver": "file",
                "filename": layer.path.to_string_lossy(),
            });
            let mut node = json!({
                "driver": "qcow2",
                "encrypt": {"format": "luks", "key-secret": Chain::secret_id(prefix, i)},
                "backing": below,
            });
            if node_names {
                file["node-name"] = json!(format!("{}f", Chain::node_name(prefix, i)));
                node["node-name"] = json!(Chain::node_name(prefix, i));
            }
            node["file"] = file;
            below = node;
        }
        below
    }

    /// The chain as a qemu-img `json:` filename.
    pub fn json_filename(&self, prefix: &str) -> String {
        format!("json:{}", self.blockdev(prefix, false))
    }
}

/// Paths go into QEMU option strings: refuse what would need escaping
/// there or is not absolute.
pub(crate) fn check_path(path: &Path) -> Result<()> {
    let s = path
        .to_str()
        .ok_or_else(|| Error::invalid("path", format!("{} is not UTF-8", path.display())))?;
    if !path.is_absolute() {
        return Err(Error::invalid("path", format!("{s} is not absolute")));
    }
    if s.chars().any(|c| c == ',' || c.is_control()) {
        return Err(Error::invalid(
            "path",
            format!("{s:?} contains a comma or a control character"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blockdev_nests_layers_top_first_each_with_its_secret() {
        let k = DiskKey::from_data_key(&[1; 32]).unwrap();
        let c = Chain::new(vec![
            Layer::new("/a/top", k.clone()),
            Layer::new("/a/base", k),
        ])
        .unwrap();
        let v = c.blockdev("d", true);
        assert_eq!(v["node-name"], "d.l0");
        assert_eq!(v["encrypt"]["key-secret"], "d.k0");
        assert_eq!(v["file"]["filename"], "/a/top");
        assert_eq!(v["backing"]["node-name"], "d.l1");
        assert_eq!(v["backing"]["encrypt"]["key-secret"], "d.k1");
        assert_eq!(v["backing"]["backing"], Value::Null);
        assert!(!c.json_filename("d").contains("node-name"));
        assert!(Chain::single("relative", DiskKey::from_data_key(&[1; 32]).unwrap()).is_err());
        assert!(Chain::single("/a,b", DiskKey::from_data_key(&[1; 32]).unwrap()).is_err());
    }
}
