//! Where things are in a config file, so that every error can name a line. YAML parsers do
//! not keep positions for values, so objects are found by their `id:` (or `name:`) line inside
//! their top-level section.

pub struct Places {
    file: String,
    lines: Vec<String>,
    /// Objects that came through the API (section, id): their place is `api (kind id)`.
    api: std::collections::BTreeSet<(String, String)>,
}

impl Places {
    pub fn new(file: &str, text: &str) -> Self {
        Places {
            file: file.to_string(),
            lines: text.lines().map(str::to_string).collect(),
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
        let line = self.section_range(section).and_then(|(start, end)| {
            (start..end).find(|&i| {
                let l = self.lines[i]
                    .trim_start()
                    .trim_start_matches("- ")
                    .trim_start();
                l.strip_prefix(key)
                    .and_then(|r| r.trim_start().strip_prefix(':'))
                    .map(|v| {
                        v.split(" #")
                            .next()
                            .unwrap_or("")
                            .trim()
                            .trim_matches(|c| c == '"' || c == '\'')
                            == id
                    })
                    .unwrap_or(false)
            })
        });
        match line {
            Some(i) => format!("{} ({kind} {id})", self.at_line(i + 1)),
            None => format!("{} ({kind} {id})", self.file),
        }
    }

    fn section_range(&self, section: &str) -> Option<(usize, usize)> {
        let header = format!("{section}:");
        let start = self.lines.iter().position(|l| l.starts_with(&header))?;
        let end = (start + 1..self.lines.len())
            .find(|&i| {
                let l = &self.lines[i];
                !l.is_empty()
                    && !l.starts_with(' ')
                    && !l.starts_with('#')
                    && !l.starts_with('-')
                    && !l.starts_with('\t')
            })
            .unwrap_or(self.lines.len());
        Some((start, end))
    }
}
