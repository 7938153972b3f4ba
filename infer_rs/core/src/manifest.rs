//! The tensor manifests of `shared_schema/manifests/`, compiled in, evaluated against a
//! model's config. The expression grammar is the one documented in `train/manifest.py`:
//!
//! ```text
//! expr  := term (("+" | "-") term)*
//! term  := unary ("*" unary)*
//! unary := "-" unary | atom
//! atom  := INT | NAME | NAME "[" expr "]" | "len(" NAME ")" | "(" expr ")"
//! ```

use crate::arch::Arch;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

#[derive(Debug, Deserialize)]
struct Manifest {
    tensors: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
struct Entry {
    name: String,
    shape: Vec<String>,
    #[serde(rename = "for")]
    repeat: Option<Loop>,
}

#[derive(Debug, Deserialize)]
struct Loop {
    var: String,
    from: Value,
    to: Value,
}

/// The manifest text of an architecture, as shipped in `shared_schema/`.
pub fn manifest_source(arch: Arch) -> &'static str {
    match arch {
        Arch::Vae => include_str!("../../../shared_schema/manifests/vae.json"),
        Arch::Wgan => include_str!("../../../shared_schema/manifests/wgan.json"),
        Arch::Gpt => include_str!("../../../shared_schema/manifests/gpt.json"),
    }
}

/// Every tensor name the manifest requires for `config`, with its shape.
pub fn expected_shapes(arch: Arch, config: &Value) -> Result<BTreeMap<String, Vec<usize>>, String> {
    let manifest: Manifest =
        serde_json::from_str(manifest_source(arch)).map_err(|e| e.to_string())?;
    let mut shapes = BTreeMap::new();
    for entry in &manifest.tensors {
        let Some(repeat) = &entry.repeat else {
            shapes.insert(entry.name.clone(), shape_of(entry, config, None)?);
            continue;
        };
        let bound = |v: &Value| match v {
            Value::String(text) => evaluate(text, config, None),
            other => other
                .as_i64()
                .ok_or_else(|| format!("bad loop bound {other}")),
        };
        for i in bound(&repeat.from)?..bound(&repeat.to)? {
            let name = entry
                .name
                .replace(&format!("{{{}}}", repeat.var), &i.to_string());
            shapes.insert(name, shape_of(entry, config, Some((&repeat.var, i)))?);
        }
    }
    Ok(shapes)
}

fn shape_of(entry: &Entry, config: &Value, var: Option<(&str, i64)>) -> Result<Vec<usize>, String> {
    entry
        .shape
        .iter()
        .map(|dim| {
            let value = evaluate(dim, config, var)?;
            usize::try_from(value)
                .map_err(|_| format!("{}: dimension {dim} = {value} < 0", entry.name))
        })
        .collect()
}

/// Evaluate one shape expression; `var` binds the loop variable.
pub fn evaluate(text: &str, config: &Value, var: Option<(&str, i64)>) -> Result<i64, String> {
    let mut parser = Parser {
        tokens: tokenize(text)?,
        pos: 0,
        config,
        var,
        text,
    };
    let value = parser.expr()?;
    if parser.pos != parser.tokens.len() {
        return Err(format!(
            "'{text}': unexpected '{}'",
            parser.tokens[parser.pos]
        ));
    }
    Ok(value)
}

fn tokenize(text: &str) -> Result<Vec<String>, String> {
    let mut tokens = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            tokens.push(chars[start..i].iter().collect());
        } else if "+-*()[]".contains(c) {
            tokens.push(c.to_string());
            i += 1;
        } else {
            return Err(format!("'{text}': bad character '{c}'"));
        }
    }
    Ok(tokens)
}

struct Parser<'a> {
    tokens: Vec<String>,
    pos: usize,
    config: &'a Value,
    var: Option<(&'a str, i64)>,
    text: &'a str,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&str> {
        self.tokens.get(self.pos).map(String::as_str)
    }

    fn take(&mut self) -> Result<String, String> {
        let token = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        token.ok_or_else(|| format!("'{}': ends too early", self.text))
    }

    fn expect(&mut self, want: &str) -> Result<(), String> {
        let got = self.take()?;
        if got == want {
            Ok(())
        } else {
            Err(format!("'{}': expected '{want}', found '{got}'", self.text))
        }
    }

    fn expr(&mut self) -> Result<i64, String> {
        let mut value = self.term()?;
        while let Some(op) = self
            .peek()
            .filter(|t| *t == "+" || *t == "-")
            .map(str::to_owned)
        {
            self.pos += 1;
            let rhs = self.term()?;
            value = if op == "+" { value + rhs } else { value - rhs };
        }
        Ok(value)
    }

    fn term(&mut self) -> Result<i64, String> {
        let mut value = self.unary()?;
        while self.peek() == Some("*") {
            self.pos += 1;
            value *= self.unary()?;
        }
        Ok(value)
    }

    fn unary(&mut self) -> Result<i64, String> {
        if self.peek() == Some("-") {
            self.pos += 1;
            return Ok(-self.unary()?);
        }
        self.atom()
    }

    fn atom(&mut self) -> Result<i64, String> {
        let token = self.take()?;
        if let Ok(number) = token.parse::<i64>() {
            return Ok(number);
        }
        if token == "(" {
            let value = self.expr()?;
            self.expect(")")?;
            return Ok(value);
        }
        if token == "len" {
            self.expect("(")?;
            let name = self.take()?;
            self.expect(")")?;
            return match self.lookup(&name)? {
                Value::Array(items) => Ok(items.len() as i64),
                Value::String(text) => Ok(text.chars().count() as i64),
                other => Err(format!("len({name}): {other} has no length")),
            };
        }
        if let Some((var, value)) = self.var {
            if token == var {
                return Ok(value);
            }
        }
        let value = self.lookup(&token)?.clone();
        if self.peek() != Some("[") {
            return value
                .as_i64()
                .ok_or_else(|| format!("'{token}' is not an integer"));
        }
        self.pos += 1;
        let index = self.expr()?;
        self.expect("]")?;
        let items = value
            .as_array()
            .ok_or_else(|| format!("'{token}' is not a list"))?;
        let at = if index < 0 {
            items.len() as i64 + index
        } else {
            index
        };
        usize::try_from(at)
            .ok()
            .and_then(|at| items.get(at))
            .and_then(Value::as_i64)
            .ok_or_else(|| format!("{token}[{index}] is out of range"))
    }

    fn lookup(&self, name: &str) -> Result<&Value, String> {
        self.config
            .get(name)
            .ok_or_else(|| format!("config has no '{name}'"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn grammar() {
        let env = json!({"hidden": [400, 200], "n_embd": 128, "vocab": "abé"});
        assert_eq!(evaluate("hidden[-1 - i]", &env, Some(("i", 1))), Ok(400));
        assert_eq!(evaluate("3 * n_embd + 1", &env, None), Ok(385));
        assert_eq!(evaluate("len(vocab) - (2 - 1)", &env, None), Ok(2));
        assert!(evaluate("hidden[0] $ 1", &env, None).is_err());
        assert!(evaluate("hidden[5]", &env, None).is_err());
    }

    #[test]
    fn vae_manifest() {
        let config = json!({"x_dim": 784, "hidden": [400, 200], "z_dim": 20, "n_classes": 0});
        let shapes = expected_shapes(Arch::Vae, &config).unwrap();
        assert_eq!(shapes["decoder.hidden.1.weight"], vec![400, 200]);
        assert_eq!(shapes["encoder.hidden.0.weight"], vec![400, 784]);
        assert_eq!(shapes.len(), 14);
    }
}
