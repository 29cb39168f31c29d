//! Models built from `nn` layers, each a config struct plus small modules.

pub mod bert;
pub mod classifier;
pub mod cnn;
pub mod inspect;
pub mod interop;
pub mod llama;
pub mod llama_cache;
pub mod llama_load;
pub mod llama_merge;
pub mod llama_train;
pub mod lora;
pub mod mlp;
pub mod resnet;
pub mod sentence;
pub mod transformer_lm;

pub use classifier::ImageClassifier;
pub use cnn::{Cnn, CnnConfig};
pub use lora::{LlamaAdapterConfig, LoraSettings};
pub use mlp::{Mlp, MlpConfig};
pub use resnet::{BlockKind, ResNet, ResNetConfig};
pub mod store;
pub use transformer_lm::{EncoderLmConfig, GptConfig, LmSpec, Positions, TransformerLm};

use crate::{Error, Result};

/// The model families largo builds and trains. The kind is a type, resolved once from a
/// training config or a model directory's `config.json`, so every match over it is exhaustive:
/// a new family is a compile error until each place that must handle it does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arch {
    /// The MLP classifier (784-128-10 on MNIST by default).
    Mlp,
    /// A convolutional classifier (PyTorch's MNIST example net by default).
    Cnn,
    /// ResNet (torchvision's, BasicBlock or Bottleneck).
    ResNet,
    /// A GPT decoder shaped like nanoGPT's `model.py`.
    Gpt,
    /// The `nn.TransformerEncoder` language model of PyTorch's tutorial ("Language Modeling with
    /// nn.Transformer"): embedding ×√d, sinusoidal positions, post-norm encoder layers, a linear
    /// head.
    EncoderLm,
    /// A pretrained Llama-family decoder (Llama, Qwen2; GGUF or Hugging Face) fine-tuned with
    /// LoRA adapters on its frozen weights.
    Llama,
}

impl Arch {
    pub const ALL: [Arch; 6] = [
        Arch::Mlp,
        Arch::Cnn,
        Arch::ResNet,
        Arch::Gpt,
        Arch::EncoderLm,
        Arch::Llama,
    ];

    /// The name in configs, `config.json` and the CLI; also the name of its config section.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Mlp => "mlp",
            Arch::Cnn => "cnn",
            Arch::ResNet => "resnet",
            Arch::Gpt => "gpt",
            Arch::EncoderLm => "encoder_lm",
            Arch::Llama => "llama",
        }
    }

    /// Reads a name, `-` or `_` alike; the names of earlier versions ("seed_transformer",
    /// "seed-mlp") still work.
    pub fn parse(s: &str) -> Option<Arch> {
        match s.replace('-', "_").as_str() {
            // `largo import --arch seed-mlp` named the MLP (its section was always `mlp`).
            "seed_mlp" => Some(Arch::Mlp),
            name => Self::ALL
                .into_iter()
                .find(|a| a.name() == name || a.earlier_name() == Some(name)),
        }
    }

    /// The name it (and its config section) had in earlier versions, if it was renamed.
    pub fn earlier_name(self) -> Option<&'static str> {
        match self {
            Arch::EncoderLm => Some("seed_transformer"),
            Arch::Mlp | Arch::Cnn | Arch::ResNet | Arch::Gpt | Arch::Llama => None,
        }
    }

    /// The name on the command line (`largo import --arch encoder-lm`).
    pub fn cli_name(self) -> String {
        self.name().replace('_', "-")
    }

    /// `mlp, gpt, encoder_lm`, for error messages.
    pub fn names() -> String {
        let names: Vec<&str> = Self::ALL.iter().map(|a| a.name()).collect();
        names.join(", ")
    }

    /// `"mlp", "gpt" or "encoder_lm"`, for error messages.
    pub fn expected() -> String {
        let names: Vec<String> = Self::ALL
            .iter()
            .map(|a| format!("{:?}", a.name()))
            .collect();
        let (last, rest) = names.split_last().expect("several kinds");
        format!("{} or {last}", rest.join(", "))
    }

    /// Language models train on text and generate; the MLP, the CNN and ResNet classify images.
    pub fn is_lm(self) -> bool {
        match self {
            Arch::Mlp | Arch::Cnn | Arch::ResNet => false,
            Arch::Gpt | Arch::EncoderLm | Arch::Llama => true,
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Arch {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Arch::parse(s)
            .ok_or_else(|| Error::Invalid(format!("{s:?}: expected {}", Arch::expected())))
    }
}

impl TryFrom<String> for Arch {
    type Error = String;

    fn try_from(s: String) -> std::result::Result<Self, String> {
        Arch::parse(&s).ok_or_else(|| format!("model.arch = {s:?}: expected {}", Arch::expected()))
    }
}

impl From<Arch> for String {
    fn from(a: Arch) -> String {
        a.name().to_string()
    }
}

impl serde::Serialize for Arch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Arch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Arch::try_from(s).map_err(serde::de::Error::custom)
    }
}

/// A model family with its settings: one config per kind.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelKind {
    Mlp(MlpConfig),
    Cnn(CnnConfig),
    ResNet(ResNetConfig),
    Gpt(GptConfig),
    EncoderLm(EncoderLmConfig),
    Llama(LlamaAdapterConfig),
}

impl ModelKind {
    pub fn arch(&self) -> Arch {
        match self {
            ModelKind::Mlp(_) => Arch::Mlp,
            ModelKind::Cnn(_) => Arch::Cnn,
            ModelKind::ResNet(_) => Arch::ResNet,
            ModelKind::Gpt(_) => Arch::Gpt,
            ModelKind::EncoderLm(_) => Arch::EncoderLm,
            ModelKind::Llama(_) => Arch::Llama,
        }
    }

    /// The skeleton of largo's own language models (GPT, the encoder LM); None for the rest.
    pub fn lm_spec(&self) -> Option<LmSpec> {
        match self {
            ModelKind::Mlp(_) | ModelKind::Cnn(_) | ModelKind::ResNet(_) | ModelKind::Llama(_) => {
                None
            }
            ModelKind::Gpt(c) => Some(c.spec()),
            ModelKind::EncoderLm(c) => Some(c.spec()),
        }
    }

    /// Checks the settings (the sizes a model is built from).
    pub fn validate(&self) -> Result<()> {
        match self {
            ModelKind::Mlp(c) => c.validate(),
            ModelKind::Cnn(c) => c.validate(),
            ModelKind::ResNet(c) => c.validate(),
            ModelKind::Llama(c) => c.validate(),
            ModelKind::Gpt(_) | ModelKind::EncoderLm(_) => {
                self.lm_spec().expect("a language model").validate()
            }
        }
    }

    /// The image classifier these settings build, freshly initialised from `rng`; None for a
    /// language model.
    pub fn build_classifier(
        &self,
        rng: &mut crate::rng::Rng,
    ) -> Result<Option<Box<dyn ImageClassifier>>> {
        Ok(match self {
            ModelKind::Mlp(c) => {
                let mut m = Mlp::new(c.clone())?;
                m.init(rng);
                Some(Box::new(m))
            }
            ModelKind::Cnn(c) => {
                let mut m = Cnn::new(c.clone())?;
                m.init(rng);
                Some(Box::new(m))
            }
            ModelKind::ResNet(c) => {
                let mut m = ResNet::new(c.clone())?;
                m.init(rng);
                Some(Box::new(m))
            }
            ModelKind::Gpt(_) | ModelKind::EncoderLm(_) | ModelKind::Llama(_) => None,
        })
    }
}
