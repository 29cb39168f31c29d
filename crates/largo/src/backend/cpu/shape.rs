//! The shapes of image tensors and convolutions, shared by the convolution algorithms (im2col
//! in `conv.rs`, Winograd in `winograd.rs`), pooling and batch norm.

use crate::{bail, Result};

/// An activation's shape: [n, c, h, w], row-major.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Nchw {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

impl Nchw {
    pub fn new(n: usize, c: usize, h: usize, w: usize) -> Self {
        Nchw { n, c, h, w }
    }

    /// h·w: one channel's plane.
    pub fn plane(&self) -> usize {
        self.h * self.w
    }

    /// c·h·w: one image.
    pub fn image(&self) -> usize {
        self.c * self.plane()
    }

    pub fn len(&self) -> usize {
        self.n * self.image()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::fmt::Display for Nchw {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "[{}, {}, {}, {}]", self.n, self.c, self.h, self.w)
    }
}

/// `what` must hold exactly `want` values: the error names the tensor and its expected shape.
pub(crate) fn check_len(
    op: &str,
    what: &str,
    got: usize,
    want: usize,
    shape: impl std::fmt::Display,
) -> Result<()> {
    if got != want {
        bail!("{op}: {what} has {got} values, expected {want} ({shape})");
    }
    Ok(())
}

/// Output length along one axis: ⌊(in + 2·pad − dil·(k−1) − 1) / stride⌋ + 1, or an error when
/// the dilated kernel does not fit in the padded input.
pub(crate) fn out_len(
    op: &str,
    axis: &str,
    input: usize,
    kernel: usize,
    stride: usize,
    pad: usize,
    dilation: usize,
) -> Result<usize> {
    if kernel == 0 || stride == 0 || dilation == 0 {
        bail!("{op}: kernel, stride and dilation must be ≥ 1, got {kernel}, {stride}, {dilation} along the {axis}");
    }
    let span = dilation * (kernel - 1) + 1;
    if span > input + 2 * pad {
        bail!(
            "{op}: the kernel spans {span} along the {axis} (size {kernel}, dilation {dilation}), \
             more than the padded input's {} ({input} + 2·{pad} padding)",
            input + 2 * pad
        );
    }
    Ok((input + 2 * pad - span) / stride + 1)
}

/// One conv2d call: input [N, C_in, H, W] → output [N, C_out, OH, OW], weight
/// [C_out, C_in/groups, KH, KW]. Pairs are (height, width).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dShape {
    pub input: Nchw,
    pub out_channels: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
    pub groups: usize,
}

impl Conv2dShape {
    /// Checks the hyper-parameters against the input and returns the output's shape.
    pub fn output(&self) -> Result<Nchw> {
        let (i, g) = (&self.input, self.groups);
        if i.c == 0 || i.h == 0 || i.w == 0 || self.out_channels == 0 {
            bail!(
                "conv2d: channels, height and width must be ≥ 1, got input [{}, {}, {}, {}] and {} \
                 out_channels",
                i.n,
                i.c,
                i.h,
                i.w,
                self.out_channels
            );
        }
        if g == 0 || !i.c.is_multiple_of(g) || !self.out_channels.is_multiple_of(g) {
            bail!(
                "conv2d: in_channels {} and out_channels {} must both be divisible by groups {g}",
                i.c,
                self.out_channels
            );
        }
        let oh = out_len(
            "conv2d",
            "height",
            i.h,
            self.kernel[0],
            self.stride[0],
            self.padding[0],
            self.dilation[0],
        )?;
        let ow = out_len(
            "conv2d",
            "width",
            i.w,
            self.kernel[1],
            self.stride[1],
            self.padding[1],
            self.dilation[1],
        )?;
        Ok(Nchw::new(i.n, self.out_channels, oh, ow))
    }

    /// Values in the weight: C_out · C_in/groups · KH · KW.
    pub fn weight_len(&self) -> usize {
        self.out_channels * self.col_rows()
    }

    /// Rows of one group's im2col matrix (the GEMM's k): C_in/groups · KH · KW.
    pub(crate) fn col_rows(&self) -> usize {
        self.input.c / self.groups * self.kernel[0] * self.kernel[1]
    }
}
