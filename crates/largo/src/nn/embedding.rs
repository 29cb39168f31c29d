use super::{params, Module, Param};
use crate::backend::{embedding_backward, embedding_forward};
use crate::rng::Rng;
use crate::Result;

/// A lookup table [num, dim]; PyTorch initialises it N(0, 1).
#[derive(Clone, Debug)]
pub struct Embedding {
    pub weight: Param,
}

impl Embedding {
    pub fn new(num: usize, dim: usize) -> Self {
        Embedding {
            weight: Param::zeros(&[num, dim]),
        }
    }

    pub fn init_normal(&mut self, rng: &mut Rng, std: f32) {
        for v in self.weight.value.data.iter_mut() {
            *v = rng.normal() * std;
        }
    }

    pub fn dim(&self) -> usize {
        self.weight.value.shape[1]
    }

    /// ids: [n] → out: [n, dim].
    pub fn forward(&self, ids: &[u32], out: &mut [f32]) -> Result<()> {
        embedding_forward(ids, &self.weight.value.data, self.dim(), out)
    }

    pub fn backward(&mut self, ids: &[u32], dout: &[f32]) {
        let c = self.dim();
        embedding_backward(ids, dout, c, &mut self.weight.grad);
    }
}

impl Module for Embedding {
    params!(Self { weight, .. }, v => {
        v.param("weight", weight);
    });
}
