//! Gradient buckets: the parameters, last layer first (the order backward produces their
//! gradients), cut into flat buckets of at most `bucket_elems` values, all-reduced one by one.
//!
//! largo's backward runs a whole model in one call, so the buckets are reduced right after it
//! rather than while it runs; the order is already the one that overlap would need (a per-block
//! backward hook could start bucket k while block k−1 computes).

use super::comm::Communicator;
use crate::nn::Param;
use crate::Result;

/// A run of one parameter's gradient inside a bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Piece {
    /// Index into the parameter list (`Module::params_mut` order).
    pub param: usize,
    /// Range within that parameter's values.
    pub start: usize,
    pub len: usize,
}

/// The buckets of a model: each a list of pieces whose lengths sum to at most the bucket size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketPlan {
    pub buckets: Vec<Vec<Piece>>,
}

impl BucketPlan {
    /// Plans buckets over parameters of `sizes` values, in reverse order; a parameter larger
    /// than a bucket is cut across several.
    pub fn new(sizes: &[usize], bucket_elems: usize) -> Self {
        let cap = bucket_elems.max(1);
        let mut buckets = Vec::new();
        let mut cur: Vec<Piece> = Vec::new();
        let mut fill = 0;
        for (param, &n) in sizes.iter().enumerate().rev() {
            let mut start = 0;
            while start < n {
                let len = (cap - fill).min(n - start);
                cur.push(Piece { param, start, len });
                fill += len;
                start += len;
                if fill == cap {
                    buckets.push(std::mem::take(&mut cur));
                    fill = 0;
                }
            }
        }
        if !cur.is_empty() {
            buckets.push(cur);
        }
        BucketPlan { buckets }
    }

    /// Values in the biggest bucket.
    pub fn max_bucket(&self) -> usize {
        self.buckets
            .iter()
            .map(|b| b.iter().map(|p| p.len).sum::<usize>())
            .max()
            .unwrap_or(0)
    }

    /// Values over all buckets (every gradient once).
    pub fn total(&self) -> usize {
        self.buckets.iter().flatten().map(|p| p.len).sum()
    }

    /// Sums every parameter's gradient over the ranks, bucket by bucket. A bucket that is one
    /// piece is reduced in place; the others are packed into `scratch` and unpacked after.
    pub fn all_reduce(
        &self,
        params: &mut [(String, &mut Param)],
        comm: &dyn Communicator,
        scratch: &mut Vec<f32>,
    ) -> Result<()> {
        for bucket in &self.buckets {
            if let [p] = bucket.as_slice() {
                comm.all_reduce_sum(&mut params[p.param].1.grad[p.start..p.start + p.len])?;
                continue;
            }
            scratch.clear();
            for p in bucket {
                scratch.extend_from_slice(&params[p.param].1.grad[p.start..p.start + p.len]);
            }
            comm.all_reduce_sum(scratch)?;
            let mut at = 0;
            for p in bucket {
                params[p.param].1.grad[p.start..p.start + p.len]
                    .copy_from_slice(&scratch[at..at + p.len]);
                at += p.len;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_run_last_parameter_first_and_cut_big_ones() {
        let plan = BucketPlan::new(&[3, 10, 2], 4);
        let flat: Vec<Vec<(usize, usize, usize)>> = plan
            .buckets
            .iter()
            .map(|b| b.iter().map(|p| (p.param, p.start, p.len)).collect())
            .collect();
        assert_eq!(
            flat,
            vec![
                vec![(2, 0, 2), (1, 0, 2)],
                vec![(1, 2, 4)],
                vec![(1, 6, 4)],
                vec![(0, 0, 3)],
            ]
        );
        assert_eq!(plan.total(), 15);
        assert_eq!(plan.max_bucket(), 4);
        // One bucket when everything fits.
        assert_eq!(BucketPlan::new(&[3, 10, 2], 100).buckets.len(), 1);
        assert!(BucketPlan::new(&[], 4).buckets.is_empty());
    }
}
