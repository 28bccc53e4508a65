//! Reading a proxy's `/metrics` (Prometheus/OpenMetrics text) into samples
//! that tests and the demo can sum by label.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub samples: Vec<Sample>,
}

impl Metrics {
    /// Parses exposition text; comments and lines that do not parse are skipped.
    pub fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(sample)
            .collect();
        Self { samples }
    }

    /// The samples of `name` whose labels include every `(label, value)` of `filter`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        filter: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && filter
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
        })
    }

    /// The sum of the matching samples (0 when there are none).
    pub fn sum(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        self.matching(name, filter).map(|s| s.value).sum()
    }

    /// The sum of the matching samples by the value of `label`.
    pub fn by_label(
        &self,
        name: &str,
        filter: &[(&str, &str)],
        label: &str,
    ) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for s in self.matching(name, filter) {
            let key = s.labels.get(label).cloned().unwrap_or_default();
            *out.entry(key).or_default() += s.value;
        }
        out
    }
}

fn sample(line: &str) -> Option<Sample> {
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let (labels, close) = labels(&line[open + 1..])?;
            (&line[..open], labels, &line[open + 1 + close + 1..])
        }
        None => {
            let (name, rest) = line.split_once(' ')?;
            (name, BTreeMap::new(), rest)
        }
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value: rest.split_whitespace().next()?.parse().ok()?,
    })
}

/// Parses `a="x",b="y"}`; returns the labels and the index of the `}`.
fn labels(s: &str) -> Option<(BTreeMap<String, String>, usize)> {
    let mut out = BTreeMap::new();
    let bytes: Vec<char> = s.chars().collect();
    let mut i = 0;
    let mut offset = 0;
    loop {
        while i < bytes.len() && (bytes[i] == ',' || bytes[i] == ' ') {
            offset += bytes[i].len_utf8();
            i += 1;
        }
        if bytes.get(i) == Some(&'}') {
            return Some((out, offset));
        }
        let mut name = String::new();
        while i < bytes.len() && bytes[i] != '=' {
            name.push(bytes[i]);
            offset += bytes[i].len_utf8();
            i += 1;
        }
        if bytes.get(i + 1) != Some(&'"') {
            return None;
        }
        offset += 2;
        i += 2;
        let mut value = String::new();
        loop {
            let c = *bytes.get(i)?;
            offset += c.len_utf8();
            i += 1;
            match c {
                '"' => break,
                '\\' => {
                    let e = *bytes.get(i)?;
                    offset += e.len_utf8();
                    i += 1;
                    value.push(if e == 'n' { '\n' } else { e });
                }
                c => value.push(c),
            }
        }
        out.insert(name, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP weft_connections_opened Connections.
# TYPE weft_connections_opened counter
weft_connections_opened_total{direction="outbound",peer_identity="spiffe://cluster.local/ns/shop/sa/backend",tls="true"} 7
weft_connections_opened_total{direction="inbound",peer_identity="",tls="false"} 2
weft_connections_opened_total{direction="inbound",peer_identity="spiffe://cluster.local/ns/web/sa/frontend",tls="true"} 5
weft_config_generation{kind="routes"} 3
odd{v="a\"b}c"} 1.5
up 1
# EOF
"#;

    #[test]
    fn sums_by_label() {
        let m = Metrics::parse(TEXT);
        assert_eq!(m.sum("weft_connections_opened_total", &[]), 14.0);
        assert_eq!(
            m.sum("weft_connections_opened_total", &[("tls", "true")]),
            12.0
        );
        assert_eq!(
            m.sum(
                "weft_connections_opened_total",
                &[("direction", "inbound"), ("tls", "true")]
            ),
            5.0
        );
        let by = m.by_label("weft_connections_opened_total", &[], "peer_identity");
        assert_eq!(by[""], 2.0);
        assert_eq!(by["spiffe://cluster.local/ns/shop/sa/backend"], 7.0);
        assert_eq!(m.sum("weft_config_generation", &[("kind", "routes")]), 3.0);
        assert_eq!(m.sum("up", &[]), 1.0);
    }

    #[test]
    fn quoted_values_may_hold_braces_and_escapes() {
        let m = Metrics::parse(TEXT);
        let odd: Vec<_> = m.matching("odd", &[]).collect();
        assert_eq!(odd.len(), 1);
        assert_eq!(odd[0].labels["v"], "a\"b}c");
        assert_eq!(odd[0].value, 1.5);
    }
}
