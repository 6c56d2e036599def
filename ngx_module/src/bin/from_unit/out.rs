//! The nginx configuration being written, and what could not be translated.

/// Lines of nginx configuration, indented by block depth.
#[derive(Debug, Default)]
pub struct Out {
    pub text: String,
    depth: usize,
}

impl Out {
    pub fn line(&mut self, line: &str) {
        for _ in 0..self.depth {
            self.text.push_str("    ");
        }
        self.text.push_str(line);
        self.text.push('\n');
    }

    pub fn open(&mut self, head: &str) {
        self.line(&format!("{head} {{"));
        self.depth += 1;
    }

    pub fn close(&mut self) {
        self.depth -= 1;
        self.line("}");
    }

    /// Another writer's lines, inside the current block.
    pub fn append(&mut self, other: &Out) {
        for line in other.text.lines() {
            self.line(line);
        }
    }
}

/// What has no counterpart in nginx or this module, by the JSON path it came from.
#[derive(Debug, Default)]
pub struct Notes(pub Vec<String>);

impl Notes {
    pub fn add(&mut self, path: &str, reason: &str) {
        let note = format!("{path}: {reason}");
        if !self.0.contains(&note) {
            self.0.push(note);
        }
    }
}
