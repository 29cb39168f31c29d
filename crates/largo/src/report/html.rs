//! HTML building blocks of a report: escaping, inlined PNGs, tables and the page around them.
//! Every string that comes from a file goes through `escape`.

pub use crate::explain::html_escape as escape;

const BASE64_ALPHABET: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (RFC 4648 §4), as `data:` URLs take it.
pub fn base64(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let byte = |i: usize| chunk.get(i).copied().unwrap_or(0) as u32;
        let group = (byte(0) << 16) | (byte(1) << 8) | byte(2);
        // n input bytes make n + 1 significant characters; '=' pads the group to four.
        for i in 0..4 {
            if i <= chunk.len() {
                let sextet = (group >> (18 - 6 * i)) & 63;
                out.push(BASE64_ALPHABET[sextet as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Width and height from a PNG's IHDR chunk.
pub fn png_size(png: &[u8]) -> Option<(u32, u32)> {
    if png.len() < 24 || &png[..8] != b"\x89PNG\r\n\x1a\n" || &png[12..16] != b"IHDR" {
        return None;
    }
    let w = u32::from_be_bytes(png[16..20].try_into().ok()?);
    let h = u32::from_be_bytes(png[20..24].try_into().ok()?);
    Some((w, h))
}

/// A PNG inlined as a data URL, with its caption. The size attributes let the browser lay the
/// page out before decoding.
pub fn figure(png: &[u8], alt: &str, caption: &str) -> String {
    let size = png_size(png)
        .map(|(w, h)| format!(" width=\"{w}\" height=\"{h}\""))
        .unwrap_or_default();
    format!(
        "<figure><img src=\"data:image/png;base64,{}\" alt=\"{}\"{size}><figcaption>{}</figcaption></figure>\n",
        base64(png),
        escape(alt),
        escape(caption)
    )
}

/// A paragraph saying why something is missing or how to read it.
pub fn note(text: &str) -> String {
    format!("<p class=\"note\">{}</p>\n", escape(text))
}

/// Preformatted text (a config file, a sample).
pub fn pre(text: &str) -> String {
    format!("<pre>{}</pre>\n", escape(text))
}

/// Whether a cell reads as a number (then it is right-aligned): `0.5`, `-3`, `97.5%`, `1e-3`.
fn is_numeric(cell: &str) -> bool {
    let t = cell.trim().trim_end_matches('%').trim();
    !t.is_empty() && t.parse::<f64>().is_ok()
}

/// A table of text cells, escaped here; `highlight` marks one body row (e.g. the best trial).
pub fn table(head: &[String], rows: &[Vec<String>], highlight: Option<usize>) -> String {
    let mut out = String::from("<div class=\"scroll\"><table>\n<thead><tr>");
    for h in head {
        out.push_str(&format!("<th>{}</th>", escape(h)));
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    for (r, row) in rows.iter().enumerate() {
        out.push_str(if highlight == Some(r) {
            "<tr class=\"best\">"
        } else {
            "<tr>"
        });
        for cell in row {
            let class = if is_numeric(cell) {
                " class=\"num\""
            } else {
                ""
            };
            out.push_str(&format!("<td{class}>{}</td>", escape(cell)));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody></table></div>\n");
    out
}

/// Name–value pairs as a two-column table.
pub fn facts(rows: &[(&str, String)]) -> String {
    let mut out = String::from("<table class=\"facts\">\n");
    for (name, value) in rows {
        out.push_str(&format!(
            "<tr><th>{}</th><td>{}</td></tr>\n",
            escape(name),
            escape(value)
        ));
    }
    out.push_str("</table>\n");
    out
}

pub struct Section {
    /// The anchor the table of contents links to.
    pub id: String,
    pub title: String,
    /// HTML, already escaped.
    pub body: String,
}

impl Section {
    pub fn new(id: &str, title: &str, body: String) -> Self {
        Section {
            id: id.to_string(),
            title: title.to_string(),
            body,
        }
    }
}

pub struct Page {
    pub title: String,
    /// Lines under the title (text, escaped here).
    pub subtitle: Vec<String>,
    pub sections: Vec<Section>,
}

const STYLE: &str = "
:root { color-scheme: light; }
body { font: 15px/1.5 system-ui, -apple-system, 'Segoe UI', Roboto, 'DejaVu Sans', sans-serif;
       color: #1d2330; background: #f6f7f9; margin: 0; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 64px; }
h1 { font-size: 26px; margin: 8px 0 4px; }
h2 { font-size: 20px; margin: 36px 0 12px; padding-bottom: 4px; border-bottom: 2px solid #d9dde5; }
h3 { font-size: 16px; margin: 20px 0 8px; }
.subtitle { color: #5a6275; margin: 0; }
nav { margin: 16px 0 0; font-size: 14px; }
nav a { margin-right: 14px; color: #2458b3; text-decoration: none; }
nav a:hover { text-decoration: underline; }
section { background: #fff; border: 1px solid #e1e4ea; border-radius: 8px; padding: 4px 20px 18px;
          margin-top: 18px; }
table { border-collapse: collapse; margin: 8px 0; font-size: 14px; }
th, td { border: 1px solid #dde1e8; padding: 4px 10px; text-align: left; vertical-align: top; }
thead th { background: #eef1f6; position: sticky; top: 0; }
tbody tr:nth-child(even) { background: #fafbfc; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.best td { background: #fff4d6; font-weight: 600; }
table.facts th { background: #f3f5f8; font-weight: 600; white-space: nowrap; }
table.confusion td { text-align: right; min-width: 2.6em; font-variant-numeric: tabular-nums; }
table.confusion th { text-align: center; background: #eef1f6; }
.scroll { overflow-x: auto; }
pre { background: #f3f5f8; border: 1px solid #e1e4ea; border-radius: 6px; padding: 10px 12px;
      overflow-x: auto; font: 13px/1.45 'DejaVu Sans Mono', Menlo, Consolas, monospace; }
pre.sample { white-space: pre-wrap; }
pre.sample b { color: #b3261e; }
figure { margin: 12px 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #e1e4ea; border-radius: 4px;
             background: #fff; }
figcaption { color: #5a6275; font-size: 13px; }
.note { color: #5a6275; font-style: italic; }
.gallery { display: flex; flex-wrap: wrap; gap: 0 18px; }
";

impl Page {
    /// One self-contained HTML5 document: styles inline, images as data URLs, no script.
    pub fn render(&self) -> String {
        let mut out =
            String::from("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
        out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
        out.push_str("<meta name=\"generator\" content=\"largo report\">\n");
        // An empty icon, so that no browser goes looking for /favicon.ico.
        out.push_str("<link rel=\"icon\" href=\"data:,\">\n");
        out.push_str(&format!("<title>{}</title>\n", escape(&self.title)));
        out.push_str(&format!(
            "<style>{STYLE}</style>\n</head>\n<body>\n<main>\n"
        ));
        out.push_str(&format!("<h1>{}</h1>\n", escape(&self.title)));
        for line in &self.subtitle {
            out.push_str(&format!("<p class=\"subtitle\">{}</p>\n", escape(line)));
        }
        out.push_str("<nav>");
        for s in &self.sections {
            out.push_str(&format!(
                "<a href=\"#{}\">{}</a>",
                escape(&s.id),
                escape(&s.title)
            ));
        }
        out.push_str("</nav>\n");
        for s in &self.sections {
            out.push_str(&format!(
                "<section id=\"{}\">\n<h2>{}</h2>\n{}</section>\n",
                escape(&s.id),
                escape(&s.title),
                s.body
            ));
        }
        out.push_str("</main>\n</body>\n</html>\n");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in cases {
            assert_eq!(base64(plain.as_bytes()), encoded, "{plain:?}");
        }
        // Every sextet value, including the last two characters of the alphabet.
        assert_eq!(base64(&[0xfb, 0xff, 0xbf]), "+/+/");
        assert_eq!(base64(&[0, 0, 0]), "AAAA");
    }

    #[test]
    fn png_size_reads_the_header_and_rejects_other_bytes() {
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
        png.extend_from_slice(&640u32.to_be_bytes());
        png.extend_from_slice(&480u32.to_be_bytes());
        assert_eq!(png_size(&png), Some((640, 480)));
        assert_eq!(png_size(b"GIF89a, not a PNG at all......"), None);
        let fig = figure(&png, "a <b>", "c & d");
        assert!(fig.contains("width=\"640\" height=\"480\""), "{fig}");
        assert!(fig.contains("alt=\"a &lt;b&gt;\"") && fig.contains("c &amp; d"));
        assert!(fig.contains("src=\"data:image/png;base64,iVBORw0KGgo"));
    }

    #[test]
    fn config_text_is_escaped() {
        let html = pre("name = \"<script>alert('x')</script>\" & more");
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"));
        assert!(html.contains("&quot;") && html.contains("&amp; more"));
    }

    #[test]
    fn tables_escape_cells_and_align_numbers() {
        let head = vec!["trial".to_string(), "mlp.hidden".into(), "metric".into()];
        let rows = vec![
            vec!["t000".to_string(), "[64]".into(), "0.9123".into()],
            vec!["<t1>".to_string(), "[128,128]".into(), "97.5%".into()],
        ];
        let html = table(&head, &rows, Some(1));
        assert_eq!(html.matches("<tr").count(), 3);
        assert!(html.contains("<td class=\"num\">0.9123</td>"), "{html}");
        assert!(html.contains("<td class=\"num\">97.5%</td>"), "{html}");
        assert!(html.contains("<td>[64]</td>"), "{html}");
        assert!(
            html.contains("<tr class=\"best\"><td>&lt;t1&gt;</td>"),
            "{html}"
        );
        let f = facts(&[("data", "a<b".into())]);
        assert!(f.contains("<th>data</th><td>a&lt;b</td>"), "{f}");
    }

    #[test]
    fn page_is_one_html5_document_with_escaped_titles() {
        let page = Page {
            title: "run <x>".into(),
            subtitle: vec!["runs/x & y".into()],
            sections: vec![Section::new("curves", "Curves", "<p>ok</p>".into())],
        };
        let html = page.render();
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.contains("<meta charset=\"utf-8\">"));
        assert!(html.contains("<title>run &lt;x&gt;</title>"));
        assert!(html.contains("runs/x &amp; y"));
        assert!(html.contains("<a href=\"#curves\">Curves</a>"));
        assert!(html.contains("<section id=\"curves\">\n<h2>Curves</h2>\n<p>ok</p></section>"));
        assert!(
            !html.contains("<script") && !html.contains("http://") && !html.contains("https://")
        );
    }
}
