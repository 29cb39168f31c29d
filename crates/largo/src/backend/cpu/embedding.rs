//! Embedding lookup: out[i] = table[ids[i]].

use crate::{bail, Result};

/// ids: [n]; table: [vocab, c]; out: [n, c]. An id outside the table is an error, not a panic.
pub fn embedding_forward(ids: &[u32], table: &[f32], c: usize, out: &mut [f32]) -> Result<()> {
    let _span = crate::backend::profile::span("embedding forward");
    let vocab = table.len() / c;
    for (row, &id) in out.chunks_exact_mut(c).zip(ids) {
        let id = id as usize;
        if id >= vocab {
            bail!("token id {id} is outside the embedding table of {vocab} rows");
        }
        row.copy_from_slice(&table[id * c..(id + 1) * c]);
    }
    Ok(())
}

/// dtable[ids[i]] += dout[i] (ids were validated by forward). Serial: repeated ids accumulate.
pub fn embedding_backward(ids: &[u32], dout: &[f32], c: usize, dtable: &mut [f32]) {
    let _span = crate::backend::profile::span("embedding backward");
    for (row, &id) in dout.chunks_exact(c).zip(ids) {
        let id = id as usize;
        for (d, &g) in dtable[id * c..(id + 1) * c].iter_mut().zip(row) {
            *d += g;
        }
    }
}
