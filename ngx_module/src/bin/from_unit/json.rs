//! Reading a Unit configuration with the JSON path of every value at hand, so that a value of the
//! wrong kind is refused naming where it is (`applications/netbox/processes/max: ...`), as
//! Unit's control API names the path it refuses.

use serde_json::{Map, Value};

/// A value of the configuration and its path from the configuration's root.
#[derive(Clone, Copy, Debug)]
pub struct At<'a> {
    pub value: &'a Value,
    path: &'a str,
}

/// A value of the wrong kind: the message names its path.
#[derive(Debug)]
pub struct BadInput(pub String);

pub type Read<T> = Result<T, BadInput>;

fn kind(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

impl<'a> At<'a> {
    pub fn root(value: &'a Value) -> At<'a> {
        At { value, path: "" }
    }

    pub fn path(&self) -> &str {
        if self.path.is_empty() {
            "(the top level)"
        } else {
            self.path
        }
    }

    /// `path/key`: leaked so that children can borrow it like the value; a configuration is
    /// read once per run.
    fn child(&self, key: &str, value: &'a Value) -> At<'a> {
        let path = if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}/{key}", self.path)
        };
        At {
            value,
            path: Box::leak(path.into_boxed_str()),
        }
    }

    pub fn wrong(&self, expected: &str) -> BadInput {
        BadInput(format!(
            "{}: expected {expected}, got {}",
            self.path(),
            kind(self.value)
        ))
    }

    pub fn object(&self) -> Read<&'a Map<String, Value>> {
        self.value
            .as_object()
            .ok_or_else(|| self.wrong("an object"))
    }

    /// The members of an object, in the file's order.
    pub fn members(&self) -> Read<Vec<(&'a str, At<'a>)>> {
        Ok(self
            .object()?
            .iter()
            .map(|(k, v)| (k.as_str(), self.child(k, v)))
            .collect())
    }

    pub fn get(&self, key: &str) -> Option<At<'a>> {
        let value = self.value.as_object()?.get(key)?;
        Some(self.child(key, value))
    }

    pub fn items(&self) -> Read<Vec<At<'a>>> {
        let items = self
            .value
            .as_array()
            .ok_or_else(|| self.wrong("an array"))?;
        Ok(items
            .iter()
            .enumerate()
            .map(|(i, v)| self.child(&i.to_string(), v))
            .collect())
    }

    pub fn str(&self) -> Read<&'a str> {
        self.value.as_str().ok_or_else(|| self.wrong("a string"))
    }

    pub fn bool(&self) -> Read<bool> {
        self.value
            .as_bool()
            .ok_or_else(|| self.wrong("true or false"))
    }

    /// A whole number from 0 (Unit takes `10` and `10.0` alike for its integers).
    pub fn count(&self) -> Read<u64> {
        match self.value {
            Value::Number(n) => n
                .as_u64()
                .or_else(|| {
                    n.as_f64()
                        .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 1e18)
                        .map(|f| f as u64)
                })
                .ok_or_else(|| self.wrong("a whole number from 0")),
            _ => Err(self.wrong("a whole number from 0")),
        }
    }

    pub fn number(&self) -> Read<f64> {
        self.value.as_f64().ok_or_else(|| self.wrong("a number"))
    }

    /// A string, or an array of strings (Unit's patterns, `path`, `share`, ...).
    pub fn strings(&self) -> Read<Vec<(String, At<'a>)>> {
        match self.value {
            Value::String(s) => Ok(vec![(s.clone(), *self)]),
            Value::Array(_) => self
                .items()?
                .into_iter()
                .map(|item| Ok((item.str()?.to_owned(), item)))
                .collect(),
            _ => Err(self.wrong("a string or an array of strings")),
        }
    }

    /// A named child that must be there.
    pub fn required(&self, key: &str) -> Read<At<'a>> {
        self.get(key).ok_or_else(|| {
            BadInput(format!(
                "{}: the required option \"{key}\" is missing",
                self.path()
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_path_of_the_value() {
        let v: Value =
            serde_json::from_str(r#"{"applications": {"a": {"processes": {"max": "4"}}}}"#)
                .unwrap();
        let root = At::root(&v);
        let max = root
            .get("applications")
            .and_then(|a| a.get("a"))
            .and_then(|a| a.get("processes"))
            .and_then(|p| p.get("max"))
            .unwrap();
        assert_eq!(
            max.count().unwrap_err().0,
            "applications/a/processes/max: expected a whole number from 0, got \"4\""
        );
        let routes: Value = serde_json::from_str(r#"{"routes": [{"match": 3}]}"#).unwrap();
        let step = At::root(&routes).get("routes").unwrap().items().unwrap()[0];
        assert_eq!(
            step.get("match").unwrap().object().unwrap_err().0,
            "routes/0/match: expected an object, got 3"
        );
        assert!(step
            .required("action")
            .unwrap_err()
            .0
            .contains("routes/0: the required option \"action\" is missing"));
    }

    #[test]
    fn whole_numbers_may_be_written_as_floats() {
        let v: Value = serde_json::from_str("[10, 10.0, 1.5, -1]").unwrap();
        let items = At::root(&v).items().unwrap();
        assert_eq!(items[0].count().unwrap(), 10);
        assert_eq!(items[1].count().unwrap(), 10);
        assert!(items[2].count().is_err());
        assert!(items[3].count().is_err());
    }

    #[test]
    fn members_keep_the_files_order() {
        let v: Value = serde_json::from_str(r#"{"b": 1, "a": 2}"#).unwrap();
        let names: Vec<_> = At::root(&v)
            .members()
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(names, ["b", "a"]);
    }
}
