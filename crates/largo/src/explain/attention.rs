//! Attention maps: the softmax(QKᵀ/√d) probabilities of every layer and head over one text,
//! rendered as a grid of heatmaps (query tokens down, key tokens across) or written as JSON.

use super::{language_model_and_ids, token_texts, viridis_rgb, visible_token};
use crate::draw;
use crate::models::sentence::{is_hf_dir, SentenceEncoder};
use crate::nn::Forward;
use crate::{Error, Result};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::Serialize;
use std::path::Path;

#[derive(Clone, Debug, Serialize)]
pub struct AttentionMaps {
    /// "gpt", "encoder_lm" or "bert".
    pub arch: String,
    /// The tokens as the model saw them (BERT's include [CLS] and [SEP]).
    pub tokens: Vec<String>,
    pub layers: usize,
    pub heads: usize,
    /// weights[layer][head]: [T, T] row-major; row i is query i's distribution over the keys.
    #[serde(skip)]
    pub weights: Vec<Vec<Vec<f32>>>,
}

/// One chosen map, as the JSON output lists it.
#[derive(Serialize)]
struct MapJson<'a> {
    layer: usize,
    head: usize,
    weights: Vec<&'a [f32]>,
}

impl AttentionMaps {
    /// Runs the model at `dir` (a largo LM or run directory, or a Hugging Face BERT directory)
    /// over `text` without dropout and keeps every attention probability.
    pub fn compute(dir: &Path, text: &str) -> Result<Self> {
        if text.is_empty() {
            return Err(Error::Invalid("the text is empty".into()));
        }
        if is_hf_dir(dir) {
            return Self::bert(dir, text);
        }
        let (mut model, tokenizer, ids, arch) = language_model_and_ids(
            dir,
            text,
            "attention maps need a language model or a BERT encoder",
        )?;
        let t = ids.len();
        for block in &mut model.blocks {
            block.attn.keep_probs = true;
        }
        model.forward(&ids, Forward::eval(1, t))?;
        let heads = model.spec.n_head;
        let weights = model
            .blocks
            .iter()
            .map(|b| {
                b.attn
                    .attention_probs()
                    .chunks_exact(t * t)
                    .map(|m| m.to_vec())
                    .collect()
            })
            .collect();
        Ok(AttentionMaps {
            arch,
            tokens: token_texts(&tokenizer, &ids)?,
            layers: model.spec.n_layer,
            heads,
            weights,
        })
    }

    fn bert(dir: &Path, text: &str) -> Result<Self> {
        let enc = SentenceEncoder::load(dir)?;
        let heads = enc.bert.cfg.num_attention_heads;
        let (tokens, maps) = enc.attention_maps(text)?;
        let t = tokens.len();
        // maps[layer][sequence]: [H, T, T] for the one sequence.
        let weights = maps
            .iter()
            .map(|layer| layer[0].chunks_exact(t * t).map(|m| m.to_vec()).collect())
            .collect();
        Ok(AttentionMaps {
            arch: "bert".into(),
            tokens,
            layers: maps.len(),
            heads,
            weights,
        })
    }

    /// The (layer, head) pairs to show: all, one layer's heads, one head in every layer, or one.
    /// Layers and heads count from 0, as Hugging Face's `outputs.attentions` does.
    pub fn select(&self, layer: Option<usize>, head: Option<usize>) -> Result<Vec<(usize, usize)>> {
        if let Some(l) = layer.filter(|&l| l >= self.layers) {
            return Err(Error::Invalid(format!(
                "--layer {l} is out of range: the model has {} layers (0–{})",
                self.layers,
                self.layers - 1
            )));
        }
        if let Some(h) = head.filter(|&h| h >= self.heads) {
            return Err(Error::Invalid(format!(
                "--head {h} is out of range: the model has {} heads per layer (0–{})",
                self.heads,
                self.heads - 1
            )));
        }
        let layers: Vec<usize> = layer.map_or_else(|| (0..self.layers).collect(), |l| vec![l]);
        let heads: Vec<usize> = head.map_or_else(|| (0..self.heads).collect(), |h| vec![h]);
        Ok(layers
            .iter()
            .flat_map(|&l| heads.iter().map(move |&h| (l, h)))
            .collect())
    }

    pub fn to_json(&self, selection: &[(usize, usize)]) -> serde_json::Value {
        let t = self.tokens.len();
        let maps: Vec<MapJson> = selection
            .iter()
            .map(|&(layer, head)| MapJson {
                layer,
                head,
                weights: self.weights[layer][head].chunks_exact(t).collect(),
            })
            .collect();
        serde_json::json!({
            "arch": self.arch,
            "tokens": self.tokens,
            "layers": self.layers,
            "heads": self.heads,
            "maps": maps,
        })
    }

    /// A PNG of the selected maps: one row per layer, one column per head, tokens on both axes.
    pub fn render_png(&self, selection: &[(usize, usize)]) -> Result<Vec<u8>> {
        let t = self.tokens.len();
        // Layers down and heads across; a single row or column of maps wraps after four.
        let layers = dedup(selection.iter().map(|s| s.0)).len();
        let heads = dedup(selection.iter().map(|s| s.1)).len();
        let n_cols = if layers > 1 && heads > 1 {
            heads
        } else {
            selection.len().min(4)
        } as u32;
        let n_rows = (selection.len() as u32).div_ceil(n_cols);
        // Cells shrink as the text and the grid grow, so the image stays a sensible size.
        let body_budget = if selection.len() <= 4 { 480 } else { 260 };
        let cell = (body_budget / t).clamp(3, 28) as u32;
        let font = cell.clamp(7, 13);
        let labels: Vec<String> = self
            .tokens
            .iter()
            .map(|s| shorten(&visible_token(s), 10))
            .collect();
        let longest = labels.iter().map(|s| s.chars().count()).max().unwrap_or(1) as u32;
        let label_w = longest * font * 6 / 10 + 6;
        let body = cell * t as u32;
        let (panel_w, panel_h) = (label_w + body + 16, 22 + body + label_w + 8);
        let size = (panel_w * n_cols, panel_h * n_rows);
        draw::png(size, |root| {
            let draw_err = |e: DrawingAreaErrorKind<_>| Error::Invalid(format!("drawing: {e}"));
            let title = ("sans-serif", 13).into_font().color(&BLACK);
            let left = ("sans-serif", font)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Right, VPos::Center));
            let below = ("sans-serif", font)
                .into_font()
                .transform(FontTransform::Rotate90)
                .color(&BLACK)
                .pos(Pos::new(HPos::Left, VPos::Center));
            for (i, &(layer, head)) in selection.iter().enumerate() {
                let (r, c) = (i as u32 / n_cols, i as u32 % n_cols);
                let (x0, y0) = ((c * panel_w + label_w) as i32, (r * panel_h + 22) as i32);
                root.draw(&Text::new(
                    format!("layer {layer} head {head}"),
                    (x0, y0 - 18),
                    title.clone(),
                ))
                .map_err(draw_err)?;
                let map = &self.weights[layer][head];
                for (q, row) in map.chunks_exact(t).enumerate() {
                    for (k, &wgt) in row.iter().enumerate() {
                        let (rr, gg, bb) = viridis_rgb(wgt);
                        let (cx, cy) =
                            (x0 + (k as u32 * cell) as i32, y0 + (q as u32 * cell) as i32);
                        root.draw(&Rectangle::new(
                            [(cx, cy), (cx + cell as i32, cy + cell as i32)],
                            RGBColor(rr, gg, bb).filled(),
                        ))
                        .map_err(draw_err)?;
                    }
                }
                if cell >= 6 {
                    for (i, label) in labels.iter().enumerate() {
                        let mid = (i as u32 * cell + cell / 2) as i32;
                        root.draw(&Text::new(label.clone(), (x0 - 4, y0 + mid), left.clone()))
                            .map_err(draw_err)?;
                        root.draw(&Text::new(
                            label.clone(),
                            (x0 + mid, y0 + body as i32 + 4),
                            below.clone(),
                        ))
                        .map_err(draw_err)?;
                    }
                }
            }
            Ok(())
        })
    }
}

fn dedup(items: impl Iterator<Item = usize>) -> Vec<usize> {
    let mut out: Vec<usize> = Vec::new();
    for i in items {
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out
}

fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        s.chars().take(max - 1).chain(['…']).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy(layers: usize, heads: usize, t: usize) -> AttentionMaps {
        let uniform = vec![1.0 / t as f32; t * t];
        AttentionMaps {
            arch: "gpt".into(),
            tokens: (0..t).map(|i| format!("tok{i}")).collect(),
            layers,
            heads,
            weights: vec![vec![uniform; heads]; layers],
        }
    }

    #[test]
    fn selection_names_the_valid_range() {
        let m = toy(2, 4, 3);
        assert_eq!(m.select(None, None).unwrap().len(), 8);
        assert_eq!(
            m.select(Some(1), None).unwrap(),
            vec![(1, 0), (1, 1), (1, 2), (1, 3)]
        );
        assert_eq!(m.select(None, Some(2)).unwrap(), vec![(0, 2), (1, 2)]);
        let e = m.select(Some(2), None).unwrap_err().to_string();
        assert!(
            e.contains("--layer 2") && e.contains("2 layers (0–1)"),
            "{e}"
        );
        let e = m.select(Some(0), Some(9)).unwrap_err().to_string();
        assert!(e.contains("--head 9") && e.contains("4 heads"), "{e}");
    }

    #[test]
    fn png_lays_out_one_panel_per_map() {
        let size = |m: &AttentionMaps, l, h| {
            let sel = m.select(l, h).unwrap();
            let img = image::load_from_memory(&m.render_png(&sel).unwrap()).unwrap();
            (img.width(), img.height())
        };
        let m = toy(2, 3, 5);
        let (pw, ph) = size(&m, Some(0), Some(0));
        assert_eq!(
            size(&m, None, None),
            (3 * pw, 2 * ph),
            "layers down, heads across"
        );
        assert_eq!(
            size(&m, Some(1), None),
            (3 * pw, ph),
            "one layer: a row of heads"
        );
        assert_eq!(
            size(&m, None, Some(2)),
            (2 * pw, ph),
            "one head: a row of layers"
        );
        let wide = toy(1, 6, 5);
        assert_eq!(
            size(&wide, Some(0), None),
            (4 * pw, 2 * ph),
            "rows wrap after four"
        );
        let json = m.to_json(&m.select(Some(0), Some(0)).unwrap());
        assert_eq!(json["maps"][0]["weights"].as_array().unwrap().len(), 5);
        assert_eq!(json["tokens"][4], "tok4");
    }
}
