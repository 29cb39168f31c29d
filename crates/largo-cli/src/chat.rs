//! `largo chat`: a conversation with a pretrained LLM, in its own chat template: interactive on
//! a terminal (streaming, multi-turn, /reset, /exit), or one --message answered on stdout.

use crate::generate::SamplingArgs;
use anyhow::{bail, Context, Result};
use largo::data::chat_template::{ChatMessage, ChatTemplate};
use largo::data::llm_tokenizer::LlmTokenizer;
use largo::generate::llm::generate_llm;
use largo::generate::Sampling;
use largo::models::llama::Llama;
use largo::models::llama_load::LlmFiles;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// A GGUF file, a directory holding one, a Hugging Face directory (Llama, Qwen2), or a
    /// `largo finetune` run (its base with its adapter).
    #[arg(long)]
    model: PathBuf,
    /// A LoRA adapter (PEFT's layout, or a `largo finetune` run) applied on --model without
    /// merging.
    #[arg(long, value_name = "DIR")]
    adapter: Option<PathBuf>,
    /// A system message that opens the conversation.
    #[arg(long)]
    system: Option<String>,
    /// Answer this one message, print only the reply on stdout, and exit.
    #[arg(long)]
    message: Option<String>,
    /// Pretrained LLMs: expand every quantised GGUF weight to f32 and run f32 matmuls
    /// (transformers' numbers: for parity checks and exact f32 arithmetic). By default the
    /// weights stay quantised and run on the integer kernels, activations rounded to 8 bits
    /// per block as llama.cpp does.
    #[arg(long)]
    dequantize: bool,
    /// Sampling of each reply (--max-tokens: the most tokens in one reply).
    #[command(flatten)]
    sampling: SamplingArgs,
}

struct Chat {
    model: Llama,
    tokenizer: LlmTokenizer,
    template: ChatTemplate,
    sampling: Sampling,
    system: Option<String>,
    turns: Vec<ChatMessage>,
}

impl Chat {
    /// The prompt ids of the conversation so far plus the generation prompt; the oldest turns
    /// are dropped (and said so on stderr) until there is room for a reply.
    fn prompt(&mut self) -> Result<Vec<u32>> {
        let context = self.model.config.max_position_embeddings;
        let room = context.saturating_sub(self.sampling.max_tokens.min(context / 2));
        loop {
            let mut messages: Vec<ChatMessage> = self
                .system
                .iter()
                .map(|s| ChatMessage::new("system", s.clone()))
                .collect();
            messages.extend(self.turns.iter().cloned());
            let text = self
                .tokenizer
                .render_chat(&self.template, &messages, true)?;
            let ids = self.tokenizer.encode(&text, false)?;
            if ids.len() <= room {
                return Ok(ids);
            }
            if self.turns.len() <= 1 {
                bail!(
                    "the message is {} tokens with the template, more than the {room} the context of {context} leaves for a reply",
                    ids.len()
                );
            }
            // Drop the oldest exchange (user + assistant).
            let n = self.turns.len().min(2);
            self.turns.drain(..n);
            eprintln!("[the conversation is longer than the context: its oldest turn was dropped]");
        }
    }

    /// Answers the last user turn, streaming the reply to `out`.
    fn reply(&mut self, out: &mut impl Write) -> Result<String> {
        let prompt = self.prompt()?;
        let g = generate_llm(
            &self.model,
            &self.tokenizer,
            &prompt,
            &self.sampling,
            |piece| {
                let _ = write!(out, "{piece}");
                let _ = out.flush();
                true
            },
        )?;
        writeln!(out)?;
        self.turns
            .push(ChatMessage::new("assistant", g.text.trim().to_string()));
        Ok(g.text)
    }
}

pub fn run(a: Args) -> Result<()> {
    let files =
        LlmFiles::find_with_adapter(&a.model, a.adapter.as_deref())?.with_context(|| {
            format!(
                "{}: chat needs a GGUF file or a Hugging Face directory of a Llama-family model",
                a.model.display()
            )
        })?;
    let model = files.load(a.dequantize)?;
    let tokenizer = files.load_tokenizer()?;
    let source = tokenizer
        .chat_template
        .clone()
        .with_context(|| format!("{}: the model has no chat template", files.path().display()))?;
    let template = ChatTemplate::with_name(
        format!("the chat template of {}", files.path().display()),
        source,
    )?;
    let sampling = a.sampling.sampling();
    sampling.validate()?;
    let mut chat = Chat {
        model,
        tokenizer,
        template,
        sampling,
        system: a.system.clone(),
        turns: Vec::new(),
    };
    let mut out = std::io::stdout().lock();
    if let Some(message) = &a.message {
        chat.turns.push(ChatMessage::new("user", message.clone()));
        chat.reply(&mut out)?;
        return Ok(());
    }
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!(
            "chat with {} — /reset starts over, /exit ends",
            a.model.display()
        );
    }
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        if interactive {
            eprint!("> ");
        }
        let Some(line) = lines.next() else { break };
        let line = line?;
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                chat.turns.clear();
                eprintln!("[conversation cleared]");
                continue;
            }
            text => chat.turns.push(ChatMessage::new("user", text.to_string())),
        }
        chat.reply(&mut out)?;
    }
    Ok(())
}
