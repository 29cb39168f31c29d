use crate::prepare::{hint_unknown, UnknownArg};
use anyhow::Result;
use largo::data::image_folder::load_image_folder;
use largo::data::mnist::{Mnist, MnistFiles};
use largo::data::text::TokenData;
use largo::data::text::{drop_unknown, Skipped};
use largo::eval::evaluate;
use largo::eval::perplexity::{chunked_perplexity, Perplexity};
use largo::models::llama::LlamaCache;
use largo::models::llama_load::LlmFiles;
use largo::models::store::{load_classifier, load_info, load_lm, resolve_model_dir};
use largo::nn::Forward;
use largo::train::lm::evaluate_lm;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Split {
    /// Every sample of the train-* files.
    All,
    /// The validation split the model was trained with (same seed and fraction).
    Val,
    /// The training split the model was trained with.
    Train,
    /// Every sample of the t10k-* files (MNIST's test set).
    Test,
}

impl Split {
    fn name(self) -> &'static str {
        match self {
            Split::All => "all",
            Split::Val => "val",
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

#[derive(clap::Args)]
pub struct Args {
    /// A model directory, or a run directory (uses its best/ model).
    #[arg(long)]
    model: PathBuf,
    /// Classifier: an MNIST directory. Language model: a `largo prepare text` directory
    /// (its validation tokens are scored).
    #[arg(long, required_unless_present = "text", conflicts_with = "text")]
    data: Option<PathBuf>,
    /// Language model: the perplexity of this text file, scored as llama-perplexity scores it
    /// (chunks of --context tokens, the second half of each scored).
    #[arg(long)]
    text: Option<PathBuf>,
    /// --text: tokens per chunk (at most the model's context).
    #[arg(long, default_value_t = 512)]
    context: usize,
    /// --text, character-level models: characters the vocabulary lacks are an `error`
    /// (naming them) or `skip`ped (counted on stderr).
    #[arg(long, value_enum, default_value = "error")]
    unknown: UnknownArg,
    /// Pretrained LLMs: a LoRA adapter (PEFT's layout, or a `largo finetune` run) applied on
    /// --model without merging.
    #[arg(long, value_name = "DIR")]
    adapter: Option<PathBuf>,
    /// Pretrained LLMs: expand every quantised GGUF weight to f32 and run f32 matmuls
    /// (transformers' numbers: for parity checks and exact f32 arithmetic). By default the
    /// weights stay quantised and run on the integer kernels, activations rounded to 8 bits
    /// per block as llama.cpp does.
    #[arg(long)]
    dequantize: bool,
    /// Classifier only: which samples to score. Default: all of the train-* files, or the
    /// t10k-* files when the directory has only those.
    #[arg(long, value_enum)]
    split: Option<Split>,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
}

pub fn run(a: Args) -> Result<()> {
    if let Some(text) = &a.text {
        return eval_text(&a, text);
    }
    if let Some(files) = LlmFiles::find_with_adapter(&a.model, a.adapter.as_deref())? {
        anyhow::bail!(
            "{} is a pretrained language model: score a text file with --text FILE (perplexity as llama-perplexity computes it)",
            files.describe()
        );
    }
    let dir = resolve_model_dir(&a.model)?;
    if load_info(&dir)?.lm_spec().is_some() {
        return eval_lm(&a, &dir);
    }
    let data_path = a.data.as_deref().expect("checked above");
    let (mut model, info, norm) = load_classifier(&dir)?;
    let split = a.split.unwrap_or(
        if !MnistFiles::Train.present_in(data_path) && MnistFiles::Test.present_in(data_path) {
            Split::Test
        } else {
            Split::All
        },
    );
    let files = if split == Split::Test {
        MnistFiles::Test
    } else {
        MnistFiles::Train
    };
    // A directory of class folders and no IDX files: torchvision's ImageFolder layout.
    let image_folder = !MnistFiles::Train.present_in(data_path)
        && !MnistFiles::Test.present_in(data_path)
        && std::fs::read_dir(data_path).is_ok_and(|rd| rd.flatten().any(|e| e.path().is_dir()));
    let data = if image_folder {
        let [c, h, w] = model.input();
        load_image_folder(data_path, c, [h, w], model.classes())?
    } else {
        Mnist::load_files(data_path, files, model.classes()).map_err(|e| {
            let hint = match files {
                MnistFiles::Train if MnistFiles::Test.present_in(data_path) => {
                    "; it has the t10k-* test files: score them with --split test"
                }
                MnistFiles::Test if MnistFiles::Train.present_in(data_path) => {
                    "; it has train-* files: score them with --split all, val or train"
                }
                _ => "",
            };
            anyhow::anyhow!("{e}{hint}")
        })?
    };
    model.check_input(data.pixels, &data_path.display().to_string())?;
    let indices: Vec<usize> = match split {
        Split::All | Split::Test => (0..data.len()).collect(),
        Split::Val | Split::Train => {
            let Some(s) = info.split else {
                anyhow::bail!(
                    "{}: the model does not record its split; use --split all",
                    dir.display()
                );
            };
            let (train, val) = s.indices(data.len());
            if split == Split::Val {
                val
            } else {
                train
            }
        }
    };
    if indices.is_empty() {
        anyhow::bail!("the chosen split of {} is empty", data_path.display());
    }
    let e = evaluate(model.as_mut(), &data, &norm, &indices, a.batch_size.max(1))?;
    let files: Vec<String> = data.files.iter().map(|f| f.display().to_string()).collect();
    if a.json {
        let mut v = serde_json::to_value(&e)?;
        v["split"] = split.name().into();
        v["files"] = files.into();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("model {}", dir.display());
        println!("split {}: {}", split.name(), files.join(", "));
        print!("{}", e.render());
    }
    Ok(())
}

/// Validation loss and perplexity over every whole window of the prepared validation tokens.
fn eval_lm(a: &Args, dir: &std::path::Path) -> Result<()> {
    let (mut model, _, tokenizer) = load_lm(dir)?;
    let data_path = a.data.as_deref().expect("checked above");
    let data = TokenData::load(data_path)?;
    if data.meta.vocab_size != model.spec.vocab_size
        || tokenizer.get_vocab_size(true) != data.meta.vocab_size
    {
        anyhow::bail!(
            "{} was tokenised with {} tokens, the model has {}: prepare the data with the model's tokenizer.json",
            data_path.display(),
            data.meta.vocab_size,
            model.spec.vocab_size
        );
    }
    let t = model.spec.block_size;
    if data.val.len() < t + 2 {
        anyhow::bail!(
            "{}: {} validation tokens, fewer than block_size + 2 = {}",
            data_path.display(),
            data.val.len(),
            t + 2
        );
    }
    // Windows of `t` tokens spread evenly over the validation split, covering all of it.
    let batch = 16;
    let batches = ((data.val.len() - 1) / t).div_ceil(batch);
    let loss = evaluate_lm(&mut model, &data.val, batch, t, batches)?;
    let windows = batches * batch;
    if a.json {
        println!(
            "{}",
            serde_json::json!({"val_loss": loss, "perplexity": loss.exp(), "windows": windows, "block_size": t})
        );
    } else {
        println!("model {}", dir.display());
        println!(
            "validation loss {loss:.4}  perplexity {:.3}  ({windows} windows of {t} tokens over {} validation tokens)",
            loss.exp(),
            data.val.len()
        );
    }
    Ok(())
}

/// Perplexity of a text file, llama-perplexity's way (see `largo::eval::perplexity`).
fn eval_text(a: &Args, text_path: &Path) -> Result<()> {
    let raw =
        std::fs::read(text_path).map_err(|e| anyhow::anyhow!("{}: {e}", text_path.display()))?;
    let text = String::from_utf8(raw).map_err(|e| {
        anyhow::anyhow!(
            "{}: not UTF-8 text (invalid byte at offset {})",
            text_path.display(),
            e.utf8_error().valid_up_to()
        )
    })?;
    if let Some(files) = LlmFiles::find_with_adapter(&a.model, a.adapter.as_deref())? {
        let model = files.load(a.dequantize)?;
        let tokenizer = files.load_tokenizer()?;
        let context = model.config.max_position_embeddings;
        if a.context > context {
            anyhow::bail!(
                "--context {} is longer than the model's context of {context} tokens",
                a.context
            );
        }
        // As llama-perplexity: BOS first (and in place of each chunk's first token) when the
        // tokenizer adds one.
        let tokens = tokenizer.encode(&text, true)?;
        let bos = tokenizer.bos.filter(|_| tokenizer.add_bos);
        let vocab = model.config.vocab_size;
        let p = chunked_perplexity(&tokens, a.context, bos, vocab, |chunk| {
            let mut cache = LlamaCache::new(&model.config);
            model.forward(chunk, &mut cache, true)
        })?;
        return print_perplexity(a, Path::new(&files.describe()), text_path, &p);
    }
    let dir = resolve_model_dir(&a.model)?;
    let (mut model, _, tokenizer) = load_lm(&dir)?;
    let mut skipped = Skipped::default();
    let text = drop_unknown(&tokenizer, &text, a.unknown.into(), &mut skipped);
    if !skipped.is_empty() {
        eprintln!("{}", skipped.describe());
    }
    let tokens =
        largo::data::text::encode(&tokenizer, &text).map_err(|e| hint_unknown(e, a.unknown))?;
    let block = model.spec.block_size;
    if a.context > block {
        anyhow::bail!(
            "--context {} is longer than the model's context of {block} tokens (block_size): give --context {block} or less",
            a.context
        );
    }
    let vocab = model.spec.vocab_size;
    let p = chunked_perplexity(&tokens, a.context, None, vocab, |chunk| {
        Ok(model
            .forward(chunk, Forward::eval(1, chunk.len()))?
            .to_vec())
    })?;
    print_perplexity(a, &dir, text_path, &p)
}

fn print_perplexity(a: &Args, model: &Path, text: &Path, p: &Perplexity) -> Result<()> {
    if a.json {
        println!("{}", serde_json::to_string_pretty(p)?);
    } else {
        println!("model {}", model.display());
        println!(
            "perplexity {:.4} over {} ({} tokens; {} chunks of {}, {} tokens scored)",
            p.perplexity,
            text.display(),
            p.tokens,
            p.chunks,
            p.context,
            p.scored
        );
    }
    Ok(())
}
