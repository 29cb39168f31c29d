//! The fine-tuning task: LoRA adapters on a pretrained Llama-family model kept frozen as
//! loaded (quantised GGUF matrices stay quantised), trained on plain text (random
//! `data.context`-token windows of the packed documents) or chat JSONL (whole conversations,
//! the loss on the assistant's tokens). Validation: fixed windows, or every held-out
//! conversation. A model directory holds the adapter in PEFT's layout plus `config.json`
//! naming the base.

use super::checkpoint::TrainState;
use super::dist::Dist;
use super::session::{Metric, Schedule, StepSums, Task, Validation};
use crate::config::Config;
use crate::data::chat_template::ChatTemplate;
use crate::data::finetune::{
    absolute, chat_example, pad_batch, random_windows, read_chat_jsonl, split_conversations,
    spread_windows, text_streams, Example,
};
use crate::data::llm_tokenizer::LlmTokenizer;
use crate::models::llama_load::LlmBase;
use crate::models::llama_train::LoraLlama;
use crate::models::store::ModelInfo;
use crate::models::{LlamaAdapterConfig, ModelKind};
use crate::nn::Module;
use crate::rng::{stream, Rng};
use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// The training and validation data of a fine-tuning run.
enum FinetuneData {
    /// Packed token streams; training draws random windows.
    Text { train: Vec<u32>, val: Vec<u32> },
    /// Conversations; training draws whole ones.
    Chat {
        train: Vec<Example>,
        val: Vec<Example>,
    },
}

pub(crate) struct FinetuneTask<'a> {
    cfg: &'a Config,
    model: LoraLlama,
    /// What `config.json` says: the base (an absolute path) and the adapters.
    saved_config: LlamaAdapterConfig,
    data: FinetuneData,
    /// Pads chat batches.
    pad: u32,
}

impl<'a> FinetuneTask<'a> {
    pub(crate) fn new(cfg: &'a Config, dist: &Dist) -> Result<Self> {
        if dist.world_size() > 1 {
            return Err(Error::Config(
                "fine-tuning a pretrained model runs in one process (--distributed is for largo's own models)".into(),
            ));
        }
        let base_path = PathBuf::from(&cfg.model.base);
        let base = LlmBase::find(&base_path)?.ok_or_else(|| {
            Error::Config(format!(
                "model.base = {:?} is not a pretrained model: expected a .gguf file or a Hugging Face directory of a Llama-family model",
                cfg.model.base
            ))
        })?;
        let files = crate::models::llama_load::LlmFiles {
            base,
            adapter: None,
        };
        let tokenizer = files.load_tokenizer()?;
        let llama = files.load(false)?;
        let lora = cfg.lora.to_config()?;
        let seed = Rng::for_stream(cfg.run.seed, stream::INIT).next_u64();
        let mut model = LoraLlama::new(llama, lora, seed)?;
        model.checkpoint_activations = cfg.train.checkpoint_activations;
        let context = cfg.data.context;
        let max = model.base.config.max_position_embeddings;
        if context > max {
            return Err(Error::Config(format!(
                "data.context = {context} exceeds the model's context of {max} (max_position_embeddings)"
            )));
        }
        let data = load_data(cfg, &tokenizer, context)?;
        let pad = tokenizer.eos.unwrap_or(0);
        let saved_config = LlamaAdapterConfig {
            base: absolute(&base_path).display().to_string(),
            lora: cfg.lora.clone(),
        };
        Ok(FinetuneTask {
            cfg,
            model,
            saved_config,
            data,
            pad,
        })
    }

    /// The next micro-batch of training examples.
    fn draw(&self, rng: &mut Rng) -> Vec<Example> {
        let b = self.cfg.train.batch_size;
        match &self.data {
            FinetuneData::Text { train, .. } => {
                random_windows(train, self.cfg.data.context, b, rng)
            }
            FinetuneData::Chat { train, .. } => (0..b)
                .map(|_| train[rng.below(train.len())].clone())
                .collect(),
        }
    }
}

/// Reads, tokenises and splits `data.path` as `data.kind` says, and reports what it found.
fn load_data(cfg: &Config, tokenizer: &LlmTokenizer, context: usize) -> Result<FinetuneData> {
    let path = Path::new(&cfg.data.path);
    let (vf, seed) = (cfg.data.val_fraction, cfg.run.seed);
    if cfg.data.kind == "chat" {
        let source = tokenizer.chat_template.clone().ok_or_else(|| {
            Error::Config(format!(
                "data.kind = \"chat\" needs the model's chat template, and {} has none",
                cfg.model.base
            ))
        })?;
        let template =
            ChatTemplate::with_name(format!("the chat template of {}", cfg.model.base), source)?;
        let conversations = read_chat_jsonl(path)?;
        let examples = conversations
            .iter()
            .map(|c| chat_example(c, &template, tokenizer, context, path))
            .collect::<Result<Vec<_>>>()?;
        let (train, val) = split_conversations(examples, vf, seed);
        let trained = |e: &[Example]| e.iter().map(Example::trained_tokens).sum::<usize>();
        if trained(&train) == 0 {
            return Err(Error::format(
                path,
                format!("no assistant tokens within the first data.context = {context} tokens of any training conversation"),
            ));
        }
        if val.is_empty() {
            return Err(Error::format(
                path,
                format!("{} conversation(s) and data.val_fraction = {vf}: validation needs at least one held out (two or more conversations, and val_fraction > 0)", train.len()),
            ));
        }
        eprintln!(
            "{}: {} training conversations ({} assistant tokens), {} validation ({} assistant tokens)",
            path.display(),
            train.len(),
            trained(&train),
            val.len(),
            trained(&val)
        );
        return Ok(FinetuneData::Chat { train, val });
    }
    let s = text_streams(path, tokenizer, vf, seed)?;
    for (name, tokens) in [("training", &s.train), ("validation", &s.val)] {
        if tokens.len() < context + 2 {
            return Err(Error::format(
                path,
                format!(
                    "the {name} split has {} tokens, fewer than data.context + 2 = {} (more text, a smaller data.context, or another data.val_fraction)",
                    tokens.len(),
                    context + 2
                ),
            ));
        }
    }
    eprintln!(
        "{}: {} training tokens ({} documents), {} validation tokens ({})",
        path.display(),
        s.train.len(),
        s.train_documents.len(),
        s.val.len(),
        s.val_documents.join(", ")
    );
    Ok(FinetuneData::Text {
        train: s.train,
        val: s.val,
    })
}

impl Task for FinetuneTask<'_> {
    fn model(&mut self) -> &mut dyn Module {
        &mut self.model
    }

    /// The adapters were initialised as PEFT does when the task was built (from the run's
    /// seed); a fresh run starts its data stream here.
    fn init(&mut self, state: &mut TrainState) {
        state.data_rng = Some(Rng::for_stream(self.cfg.run.seed, stream::SHUFFLE));
    }

    fn schedule(&self) -> Schedule {
        Schedule::Steps
    }

    /// `grad_accum` micro-batches; each one's mean loss over its trained tokens, the step's
    /// gradient the mean of theirs.
    fn forward_backward(&mut self, state: &mut TrainState, _dist: &Dist) -> Result<StepSums> {
        let accum = self.cfg.train.grad_accum;
        let mut sums = StepSums {
            loss: 0.0,
            correct: None,
            items: 0,
        };
        for _ in 0..accum {
            let rng = state
                .data_rng
                .get_or_insert_with(|| Rng::for_stream(self.cfg.run.seed, stream::SHUFFLE));
            let examples = self.draw(rng);
            let refs: Vec<&Example> = examples.iter().collect();
            let (ids, targets, _) = pad_batch(&refs, self.pad);
            let seed = state.dropout_rng.next_u64();
            let loss = self.model.forward(&ids, &targets, refs.len(), seed)?;
            self.model.backward()?;
            sums.loss += loss as f64 / accum as f64;
            sums.items += ids.len() as u64;
        }
        if accum > 1 {
            let scale = 1.0 / accum as f32;
            self.model.visit_params_mut(&mut |_, p| {
                p.grad.iter_mut().for_each(|g| *g *= scale);
            });
        }
        Ok(sums)
    }

    /// The mean loss over the validation tokens: `eval_batches` batches of fixed windows
    /// (text), or every held-out conversation (chat).
    fn validate(&mut self, _dist: &Dist) -> Result<Validation> {
        let b = self.cfg.train.batch_size;
        let windows;
        let examples: Vec<&Example> = match &self.data {
            FinetuneData::Text { val, .. } => {
                let n = b * self.cfg.train.eval_batches.max(1);
                windows = spread_windows(val, self.cfg.data.context, n);
                windows.iter().collect()
            }
            FinetuneData::Chat { val, .. } => val.iter().collect(),
        };
        let (mut total, mut count) = (0f64, 0usize);
        for refs in examples.chunks(b) {
            let (ids, targets, _) = pad_batch(refs, self.pad);
            let (loss, n) = self.model.evaluate(&ids, &targets, refs.len())?;
            total += loss as f64 * n as f64;
            count += n;
        }
        Ok(Validation {
            loss: total / count.max(1) as f64,
            accuracy: None,
        })
    }

    fn metric(&self) -> Metric {
        Metric::lower_loss()
    }

    fn unit(&self) -> &'static str {
        "tokens"
    }

    /// PEFT's `adapter_config.json` and `adapter_model.safetensors`, and largo's `config.json`
    /// naming the base, written as one directory.
    fn save(&self, dir: &Path) -> Result<()> {
        let info = ModelInfo {
            model: ModelKind::Llama(self.saved_config.clone()),
            normalization: None,
            split: None,
        };
        crate::io::write_dir_atomic(dir, |tmp| {
            self.model
                .save_adapter(tmp, Some(&self.saved_config.base))?;
            let json = serde_json::to_string_pretty(&info).expect("model info serialises");
            crate::io::write_atomic(
                &tmp.join(crate::models::store::CONFIG_FILE),
                json.as_bytes(),
            )
        })
    }
}
