//! Where things are in a config file, so that every error can name a line. YAML parsers do
//! not keep positions for values, so objects are found by their `id:` (or `name:`) line inside
//! their top-level section.

use std::collections::HashMap;

pub struct Places {
    file: String,
    lines: Vec<String>,
    /// Objects that came through the API (section, id): their place is `api (kind id)`.
    api: std::collections::BTreeSet<(String, String)>,
    /// The line of each `id:` and `name:` in each top-level section, found in one pass (a
    /// search per object made a file of thousands of flows take seconds to check).
    keys: HashMap<(String, &'static str), HashMap<String, usize>>,
}

/// The keys an object is found by.
const KEYS: [&str; 2] = ["id", "name"];

/// Whether `line` starts a top-level section (or ends the one before).
fn is_top_level(line: &str) -> bool {
    !line.is_empty()
        && !line.starts_with(' ')
        && !line.starts_with('#')
        && !line.starts_with('-')
        && !line.starts_with('\t')
}

/// The value of `key: value` on an object's line (`- id: crm`, `  name: "x" # note`).
fn value_of<'l>(line: &'l str, key: &str) -> Option<&'l str> {
    let l = line.trim_start().trim_start_matches("- ").trim_start();
    let v = l.strip_prefix(key)?.trim_start().strip_prefix(':')?;
    Some(
        v.split(" #")
            .next()
            .unwrap_or("")
            .trim()
            .trim_matches(|c| c == '"' || c == '\''),
    )
}

fn index_keys(lines: &[String]) -> HashMap<(String, &'static str), HashMap<String, usize>> {
    let mut keys: HashMap<(String, &'static str), HashMap<String, usize>> = HashMap::new();
    let mut section: Option<String> = None;
    for (i, line) in lines.iter().enumerate() {
        if is_top_level(line) {
            section = line.split_once(':').map(|(name, _)| name.to_string());
            continue;
        }
        let Some(section) = &section else {
            continue;
        };
        for key in KEYS {
            if let Some(value) = value_of(line, key) {
                keys.entry((section.clone(), key))
                    .or_default()
                    .entry(value.to_string())
                    .or_insert(i);
            }
        }
    }
    keys
}

impl Places {
    pub fn new(file: &str, text: &str) -> Self {
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        Places {
            file: file.to_string(),
            keys: index_keys(&lines),
            lines,
            api: Default::default(),
        }
    }

    /// Marks an object of `section` as one that came through the API.
    pub fn add_api_object(&mut self, section: &str, id: &str) {
        self.api.insert((section.to_string(), id.to_string()));
    }

    pub fn at_line(&self, line: usize) -> String {
        format!("{}:{line}", self.file)
    }

    /// The place of a top-level section such as `settings:`.
    pub fn section(&self, section: &str) -> String {
        match self.section_range(section) {
            Some((start, _)) => self.at_line(start + 1),
            None => self.file.clone(),
        }
    }

    /// The place of the object with `id: <id>` in `section`, e.g. "ferry.yaml:12 (destination crm)".
    pub fn object(&self, section: &str, kind: &str, id: &str) -> String {
        self.object_named(section, kind, "id", id)
    }

    pub fn object_named(&self, section: &str, kind: &str, key: &str, id: &str) -> String {
        if self.api.contains(&(section.to_string(), id.to_string())) {
            return format!("api ({kind} {id})");
        }
        let line = KEYS
            .iter()
            .find(|k| **k == key)
            .and_then(|k| self.keys.get(&(section.to_string(), *k)))
            .and_then(|ids| ids.get(id))
            .copied();
        match line {
            Some(i) => format!("{} ({kind} {id})", self.at_line(i + 1)),
            None => format!("{} ({kind} {id})", self.file),
        }
    }

    fn section_range(&self, section: &str) -> Option<(usize, usize)> {
        let header = format!("{section}:");
        let start = self.lines.iter().position(|l| l.starts_with(&header))?;
        let end = (start + 1..self.lines.len())
            .find(|&i| is_top_level(&self.lines[i]))
            .unwrap_or(self.lines.len());
        Some((start, end))
    }
}
