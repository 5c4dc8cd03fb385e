//! A JPEG decoder whose output is bit-identical to libjpeg-turbo's (as used
//! by Pillow) for the common case: 8-bit, Huffman-coded, sequential or
//! progressive, greyscale or three-component YCbCr/RGB.
//!
//! Entropy decoding is exact by nature; what makes decoders differ is the
//! reconstruction, so these parts are ports of libjpeg-turbo's C code:
//! the accurate integer IDCT (`jidctint.c`, `jpeg_idct_islow`) with its
//! range-limit table, "fancy" chroma upsampling (`jdsample.c`: h2v1, h1v2,
//! h2v2 triangle filters with their alternating rounding biases, context
//! rows replicated at the top and bottom edges, replication for other
//! integer ratios and for chroma planes at most 2 samples wide) and the
//! YCbCr→RGB tables of `jdcolor.c`. libjpeg-turbo's SIMD versions of these
//! are bit-exact with the C ones.
//!
//! Anything else (arithmetic coding, 12-bit, lossless, CMYK/YCCK, odd
//! sampling ratios) and any damaged file returns `Err`, and the caller falls
//! back to the `image` crate's decoder (zune-jpeg), which is more lenient
//! but differs from libjpeg-turbo by a few levels. (Damage inside the AC
//! scans that a 1/8 decode skips unread goes unnoticed, as in libjpeg-turbo,
//! which reads them but only warns.)

use image::{DynamicImage, GrayImage, RgbImage};

/// Why this decoder declined; the caller falls back to another decoder.
pub(crate) type Declined = &'static str;
type Result<T> = std::result::Result<T, Declined>;

/// Zigzag index → natural index, padded like libjpeg's
/// `jpeg_natural_order` so that corrupt run lengths cannot index past it.
const NATURAL_ORDER: [usize; 80] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20,
    13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59,
    52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63,
    63, 63, 63, 63, 63, 63,
];

/// Natural index → zigzag index: `NATURAL_ORDER`'s inverse (tested).
const ZIGZAG_ORDER: [usize; 64] = {
    let mut zigzag = [0; 64];
    let mut k = 0;
    while k < 64 {
        zigzag[NATURAL_ORDER[k]] = k;
        k += 1;
    }
    zigzag
};

/// Decodes `data` exactly as libjpeg-turbo would, or declines.
#[cfg(test)]
pub(crate) fn decode(data: &[u8]) -> Result<DynamicImage> {
    decode_reduced(data, 1)
}

/// Decodes `data` at `1 / reduction` of its size (`reduction` is 1, 2, 4
/// or 8) exactly as libjpeg-turbo does with `scale_num = 1`, `scale_denom =
/// reduction` (Pillow's `draft()`), or declines: the reduction happens in
/// the IDCT (`jidctred.c`'s 4x4, 2x2 and 1x1 transforms), chroma planes are
/// brought to full size by a larger IDCT where the sampling allows
/// (`jdmaster.c`), and the output is `ceil(width / reduction)` x
/// `ceil(height / reduction)`.
pub(crate) fn decode_reduced(data: &[u8], reduction: usize) -> Result<DynamicImage> {
    if !matches!(reduction, 1 | 2 | 4 | 8) {
        return Err("unsupported reduction");
    }
    let mut d = Decoder {
        min_size: 8 / reduction,
        ..Decoder::default()
    };
    d.run(data)?;
    d.finish()
}

// ---------------------------------------------------------------- Huffman

const FAST_BITS: u32 = 9;

struct Huffman {
    /// Indexed by the next `FAST_BITS` bits: `(length << 8) | symbol`, or 0.
    fast: Box<[u16; 1 << FAST_BITS]>,
    /// For AC tables, indexed the same way: a whole run/size code *and* its
    /// value bits when both fit in `FAST_BITS` and the value in an `i8`:
    /// `(value << 8) | (run << 4) | (code length + size)`, or 0.
    fast_ac: Box<[i16; 1 << FAST_BITS]>,
    /// For DC tables, indexed the same way: a whole size code and its
    /// value bits (the DC difference) when both fit in `FAST_BITS`:
    /// `(difference << 8) | (code length + size)`, or 0.
    fast_dc: Box<[i32; 1 << FAST_BITS]>,
    /// For AC tables, indexed the same way, what skipping a coefficient
    /// takes (its value unread): `(code length + size) | run << 5` for every
    /// code of at most `FAST_BITS` bits whatever the size of its value, or
    /// `code length | SKIP_END` for an end-of-block code; 0 for longer
    /// codes.
    skip_ac: Box<[u16; 1 << FAST_BITS]>,
    /// Largest code of each length (-1: none); index 17 is a sentinel.
    maxcode: [i32; 18],
    /// Added to a code of each length to index `values`.
    valoffset: [i32; 17],
    values: Vec<u8>,
}

impl Huffman {
    /// libjpeg's `jpeg_make_d_derived_tbl`.
    fn new(counts: &[u8; 16], values: &[u8]) -> Result<Self> {
        let mut sizes = Vec::with_capacity(values.len());
        for (l, &n) in counts.iter().enumerate() {
            sizes.extend(std::iter::repeat_n(l as u32 + 1, usize::from(n)));
        }
        if sizes.len() != values.len() {
            return Err("bad Huffman table");
        }
        let mut codes = Vec::with_capacity(sizes.len());
        let mut code = 0u32;
        let mut si = sizes.first().copied().unwrap_or(1);
        let mut p = 0;
        while p < sizes.len() {
            while p < sizes.len() && sizes[p] == si {
                codes.push(code);
                code += 1;
                p += 1;
            }
            // No code may be all ones (libjpeg rejects such tables).
            if code >= (1 << si) {
                return Err("bad Huffman table");
            }
            code <<= 1;
            si += 1;
        }
        let mut maxcode = [-1i32; 18];
        let mut valoffset = [0i32; 17];
        let mut p = 0usize;
        for l in 1..=16 {
            let n = usize::from(counts[l - 1]);
            if n > 0 {
                valoffset[l] = p as i32 - codes[p] as i32;
                p += n;
                maxcode[l] = codes[p - 1] as i32;
            }
        }
        maxcode[17] = i32::MAX;
        let mut fast = Box::new([0u16; 1 << FAST_BITS]);
        for (i, (&len, &code)) in sizes.iter().zip(&codes).enumerate() {
            if len <= FAST_BITS {
                let shift = FAST_BITS - len;
                let first = (code << shift) as usize;
                for e in &mut fast[first..first + (1 << shift)] {
                    *e = ((len as u16) << 8) | u16::from(values[i]);
                }
            }
        }
        let mut fast_ac = Box::new([0i16; 1 << FAST_BITS]);
        for (i, (out, &e)) in fast_ac.iter_mut().zip(fast.iter()).enumerate() {
            let (len, rs) = (u32::from(e >> 8), e & 0xFF);
            let (run, size) = (rs >> 4, u32::from(rs & 15));
            if e == 0 || size == 0 || len + size > FAST_BITS {
                continue;
            }
            let value = value_after_code(i, len, size);
            if (-128..=127).contains(&value) {
                *out = ((value << 8) | i32::from(run << 4) | (len + size) as i32) as i16;
            }
        }
        let mut fast_dc = Box::new([0i32; 1 << FAST_BITS]);
        for (i, (out, &e)) in fast_dc.iter_mut().zip(fast.iter()).enumerate() {
            let (len, size) = (u32::from(e >> 8), u32::from(e & 0xFF));
            if e == 0 || len + size > FAST_BITS {
                continue;
            }
            // `size` is at most 8 here: the difference fits in 9 bits.
            *out = (value_after_code(i, len, size) << 8) | (len + size) as i32;
        }
        let mut skip_ac = Box::new([0u16; 1 << FAST_BITS]);
        for (out, &e) in skip_ac.iter_mut().zip(fast.iter()) {
            let (len, run, size) = (e >> 8, (e >> 4) & 15, e & 15);
            *out = match (e, run, size) {
                (0, ..) => 0,
                // End of block.
                (_, 0..=14, 0) => len | SKIP_END,
                // A coefficient (ZRL: 15 zeros, then a zero one).
                _ => (len + size) | run << 5,
            };
        }
        #[cfg(test)]
        if tests::NO_FAST_VALUES.with(std::cell::Cell::get) {
            fast_ac.fill(0);
            fast_dc.fill(0);
            skip_ac.fill(0);
        }
        Ok(Self {
            fast,
            fast_ac,
            fast_dc,
            skip_ac,
            maxcode,
            valoffset,
            values: values.to_vec(),
        })
    }
}

/// The flag of an end-of-block code in [`Huffman::skip_ac`].
const SKIP_END: u16 = 1 << 9;

/// In a lookup table indexed by the next `FAST_BITS` bits (`i`): the value
/// whose `size` bits follow a code of `len` bits, extended
/// (`len + size <= FAST_BITS`).
fn value_after_code(i: usize, len: u32, size: u32) -> i32 {
    let magnitude = ((i << len) & ((1 << FAST_BITS) - 1)) >> (FAST_BITS - size);
    extend(magnitude as u32, size)
}

// ------------------------------------------------------------ bit reader

struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
    /// Valid bits are the top `n` bits.
    acc: u64,
    n: u32,
    /// A marker (or the end of data) was reached: zeros are fed from now on.
    stopped: bool,
    /// Zero bits fed after stopping (consuming them means the data ran out).
    fed: u32,
}

impl<'a> Bits<'a> {
    fn new(data: &'a [u8], pos: usize) -> Self {
        Self {
            data,
            pos,
            acc: 0,
            n: 0,
            stopped: false,
            fed: 0,
        }
    }

    /// libjpeg's `jpeg_fill_bit_buffer`: 0xFF 0x00 is a data 0xFF (after
    /// any number of 0xFF fill bytes); 0xFF followed by anything else is a
    /// marker, where reading stops.
    #[inline]
    fn fill(&mut self) {
        // Fast path: when the next 8 bytes hold no 0xFF (no stuffing, no
        // marker), take as many whole bytes as fit at once.
        if !self.stopped {
            if let Some(word) = self
                .data
                .get(self.pos..self.pos + 8)
                .and_then(|c| <[u8; 8]>::try_from(c).ok())
                .map(u64::from_be_bytes)
            {
                const ONES: u64 = 0x0101_0101_0101_0101;
                let inverted = !word;
                let has_ff = inverted.wrapping_sub(ONES) & !inverted & (ONES << 7) != 0;
                if !has_ff && self.n <= 56 {
                    let take = (64 - self.n) / 8;
                    let bits = 8 * take;
                    self.acc |= (word >> (64 - bits)) << (64 - self.n - bits);
                    self.n += bits;
                    self.pos += take as usize;
                    return;
                }
            }
        }
        while self.n <= 56 {
            let mut byte = 0u8;
            if !self.stopped {
                match self.data.get(self.pos) {
                    None => self.stopped = true,
                    Some(&0xFF) => {
                        let mut q = self.pos + 1;
                        while self.data.get(q) == Some(&0xFF) {
                            q += 1;
                        }
                        if self.data.get(q) == Some(&0) {
                            byte = 0xFF;
                            self.pos = q + 1;
                        } else {
                            // Leave `pos` on the marker.
                            self.pos = q - 1;
                            self.stopped = true;
                        }
                    }
                    Some(&b) => {
                        byte = b;
                        self.pos += 1;
                    }
                }
            }
            if self.stopped {
                self.fed += 8;
            }
            self.acc |= u64::from(byte) << (56 - self.n);
            self.n += 8;
        }
    }

    #[inline(always)]
    fn bits(&mut self, k: u32) -> u32 {
        if k == 0 {
            return 0;
        }
        if self.n < k {
            self.fill();
        }
        let v = (self.acc >> (64 - k)) as u32;
        self.acc <<= k;
        self.n -= k;
        v
    }

    #[inline(always)]
    fn bit(&mut self) -> bool {
        self.bits(1) != 0
    }

    #[inline(always)]
    fn decode(&mut self, h: &Huffman) -> Result<u8> {
        if self.n < 16 {
            self.fill();
        }
        let e = h.fast[(self.acc >> (64 - FAST_BITS)) as usize];
        if e != 0 {
            let len = u32::from(e >> 8);
            self.acc <<= len;
            self.n -= len;
            return Ok(e as u8);
        }
        self.decode_slow(h)
    }

    /// A DC difference: a size code from `h` and that many value bits.
    #[inline(always)]
    fn dc_difference(&mut self, h: &Huffman) -> Result<i32> {
        if self.n < 16 {
            self.fill();
        }
        let e = h.fast_dc[(self.acc >> (64 - FAST_BITS)) as usize];
        if e != 0 {
            let len = (e & 0xFF) as u32;
            self.acc <<= len;
            self.n -= len;
            return Ok(e >> 8);
        }
        let s = u32::from(self.decode(h)?);
        Ok(extend(self.bits(s), s))
    }

    /// Codes longer than `FAST_BITS` (libjpeg's `jpeg_huff_decode`).
    #[inline(never)]
    fn decode_slow(&mut self, h: &Huffman) -> Result<u8> {
        let mut l = FAST_BITS + 1;
        loop {
            let code = (self.acc >> (64 - l)) as i32;
            if code <= h.maxcode[l as usize] {
                self.acc <<= l;
                self.n -= l;
                let i = code + h.valoffset[l as usize];
                return h.values.get(i as usize).copied().ok_or("bad Huffman code");
            }
            l += 1;
            if l > 16 {
                return Err("bad Huffman code");
            }
        }
    }

    /// Whether bits fed after the end of the data were consumed.
    fn overran(&self) -> bool {
        self.fed > self.n
    }

    /// Discards buffered bits and consumes the RSTn marker that must follow.
    fn restart(&mut self) -> Result<()> {
        if self.overran() {
            return Err("data ends before the restart marker");
        }
        self.acc = 0;
        self.n = 0;
        self.fed = 0;
        self.stopped = false;
        let mut p = self.pos;
        while self.data.get(p) == Some(&0xFF) && self.data.get(p + 1) == Some(&0xFF) {
            p += 1;
        }
        match (self.data.get(p), self.data.get(p + 1)) {
            (Some(0xFF), Some(0xD0..=0xD7)) => {
                self.pos = p + 2;
                Ok(())
            }
            _ => Err("missing restart marker"),
        }
    }
}

/// A sequential (baseline) JPEG's block: its coefficients entropy-decoded
/// and inverse-transformed into the component's plane. A function of its
/// own so that its hot loop and the progressive paths are compiled apart.
#[inline(never)]
fn baseline_block(
    bits: &mut Bits<'_>,
    c: &mut Component,
    dc: &Huffman,
    ac: &Huffman,
    row: usize,
    col: usize,
) -> Result<()> {
    let diff = bits.dc_difference(dc)?;
    c.dc_pred = c.dc_pred.wrapping_add(diff);
    let q = c.qt.as_ref().ok_or("missing quantisation table")?;
    if c.size == 1 {
        // A 1/8 decode reads the DC alone: the AC coefficients are
        // entropy-decoded only to be skipped, unstored, as libjpeg-turbo's
        // `decode_mcu_fast` does when `ac_needed` is false.
        skip_ac_coefficients(bits, ac)?;
        c.plane[row * c.bw_alloc + col] = idct_1x1(c.dc_pred as i16, q[0]);
        return Ok(());
    }
    let mut coef = [0i16; 64];
    coef[0] = c.dc_pred as i16;
    ac_coefficients(bits, ac, (1, 63), |k, v| coef[NATURAL_ORDER[k]] = v)?;
    let n = c.size;
    let stride = c.bw_alloc * n;
    let at = row * n * stride + col * n;
    idct_sized(&coef, q, &mut c.plane[at..], stride, n);
    Ok(())
}

/// Entropy-decodes a block's AC coefficients `from..=to` (zigzag
/// indices: 1..=63 for a sequential block, a scan's band for a progressive
/// AC-first scan), handing each nonzero one to `store` with its zigzag
/// index (at most 79: a corrupt run may overshoot `to`, which callers
/// absorb). Returns the end-of-band symbol's run bits `r` when the block
/// ended with one before `to` (a sequential block just ends; a
/// progressive scan reads an end-of-band run from it).
#[inline(always)]
fn ac_coefficients(
    bits: &mut Bits<'_>,
    ac: &Huffman,
    (from, to): (usize, usize),
    mut store: impl FnMut(usize, i16),
) -> Result<Option<u32>> {
    let mut k = from;
    let mut end_of_band = None;
    // The buffer's state in locals (registers) for the fast path:
    // through `bits` it was stored and reloaded for every
    // coefficient, on the loop's critical path. Written back
    // before anything else uses `bits`.
    let (mut acc, mut n) = (bits.acc, bits.n);
    while k <= to {
        if n < 16 {
            (bits.acc, bits.n) = (acc, n);
            bits.fill();
            (acc, n) = (bits.acc, bits.n);
        }
        let fast = ac.fast_ac[(acc >> (64 - FAST_BITS)) as usize];
        if fast != 0 {
            k += ((fast >> 4) & 15) as usize;
            let len = (fast & 15) as u32;
            acc <<= len;
            n -= len;
            store(k, fast >> 8);
            k += 1;
            continue;
        }
        (bits.acc, bits.n) = (acc, n);
        let rs = bits.decode(ac)?;
        let (r, s) = (usize::from(rs >> 4), u32::from(rs & 15));
        if s != 0 {
            k += r;
            // At most 15 value bits: the value fits in an i16.
            store(k, extend(bits.bits(s), s) as i16);
        } else if r == 15 {
            k += 15;
        } else {
            end_of_band = Some(r as u32);
            (acc, n) = (bits.acc, bits.n);
            break;
        }
        k += 1;
        (acc, n) = (bits.acc, bits.n);
    }
    (bits.acc, bits.n) = (acc, n);
    Ok(end_of_band)
}

/// A sequential block's AC coefficients read past, unstored: the bits
/// [`ac_coefficients`] would consume (the same codes, runs and end), one
/// lookup per coefficient whose code fits in `FAST_BITS` bits whatever the
/// size of its value, where `ac_coefficients` needs code and value to fit.
#[inline(always)]
fn skip_ac_coefficients(bits: &mut Bits<'_>, ac: &Huffman) -> Result<()> {
    let mut k = 1;
    // In locals, as in `ac_coefficients`.
    let (mut acc, mut n) = (bits.acc, bits.n);
    while k <= 63 {
        // A code of up to 9 bits and up to 15 value bits.
        if n < 24 {
            (bits.acc, bits.n) = (acc, n);
            bits.fill();
            (acc, n) = (bits.acc, bits.n);
        }
        let e = ac.skip_ac[(acc >> (64 - FAST_BITS)) as usize];
        if e != 0 {
            let len = u32::from(e & 31);
            acc <<= len;
            n -= len;
            if e & SKIP_END != 0 {
                break;
            }
            k += usize::from(e >> 5) + 1;
            continue;
        }
        (bits.acc, bits.n) = (acc, n);
        let rs = bits.decode(ac)?;
        let (r, s) = (usize::from(rs >> 4), u32::from(rs & 15));
        if s == 0 && r != 15 {
            (acc, n) = (bits.acc, bits.n);
            break;
        }
        bits.bits(s);
        k += r + 1;
        (acc, n) = (bits.acc, bits.n);
    }
    (bits.acc, bits.n) = (acc, n);
    Ok(())
}

/// libjpeg's `HUFF_EXTEND`.
#[inline]
fn extend(v: u32, s: u32) -> i32 {
    if s == 0 {
        0
    } else if v < (1 << (s - 1)) {
        v as i32 + ((-1i32) << s) + 1
    } else {
        v as i32
    }
}

/// jdphuff.c's correction bit for a coefficient already nonzero: `p1` is
/// `1 << al`, `m1` is `-1 << al`.
#[inline(always)]
fn refine_coefficient(bit: bool, v: &mut i16, p1: i16, m1: i16) {
    if bit && (*v & p1) == 0 {
        *v = if *v >= 0 {
            v.wrapping_add(p1)
        } else {
            v.wrapping_add(m1)
        };
    }
}

/// Bits `from..=to` set (`from <= to <= 63`).
#[inline]
fn bit_range(from: usize, to: usize) -> u64 {
    (u64::MAX >> (63 - to)) & (u64::MAX << from)
}

/// Bit `k` set where `coef[k] != 0`.
#[inline]
fn nonzero_mask(coef: &[i16; 64]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        // SSE2 is part of x86_64.
        let mut mask = 0u64;
        let zero = unsafe { _mm_setzero_si128() };
        for (i, pair) in coef.chunks_exact(16).enumerate() {
            // SAFETY: `pair` holds 16 i16 = two unaligned 16-byte loads.
            let bytes = unsafe {
                let lo = _mm_loadu_si128(pair.as_ptr().cast());
                let hi = _mm_loadu_si128(pair.as_ptr().add(8).cast());
                let eq = _mm_packs_epi16(_mm_cmpeq_epi16(lo, zero), _mm_cmpeq_epi16(hi, zero));
                _mm_movemask_epi8(eq) as u32 as u64
            };
            mask |= (!bytes & 0xFFFF) << (16 * i);
        }
        mask
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        coef.iter()
            .enumerate()
            .fold(0, |m, (k, &c)| m | (u64::from(c != 0) << k))
    }
}

// ------------------------------------------------------------------ IDCT

const CONST_BITS: i32 = 13;
const PASS1_BITS: i32 = 2;
const FIX_0_298631336: i32 = 2446;
const FIX_0_390180644: i32 = 3196;
const FIX_0_541196100: i32 = 4433;
const FIX_0_765366865: i32 = 6270;
const FIX_0_899976223: i32 = 7373;
const FIX_1_175875602: i32 = 9633;
const FIX_1_501321110: i32 = 12299;
const FIX_1_847759065: i32 = 15137;
const FIX_1_961570560: i32 = 16069;
const FIX_2_053119869: i32 = 16819;
const FIX_2_562915447: i32 = 20995;
const FIX_3_072711026: i32 = 25172;

/// libjpeg's post-IDCT range-limit table, indexed by `x & 1023`: `x + 128`
/// clamped to 0..=255 for |x| < 512, wrapping beyond like the C code.
const IDCT_LIMIT: [u8; 1024] = {
    let mut t = [0u8; 1024];
    let mut i = 0;
    while i < 1024 {
        t[i] = if i < 128 {
            (i + 128) as u8
        } else if i < 512 {
            255
        } else if i < 896 {
            0
        } else {
            (i - 896) as u8
        };
        i += 1;
    }
    t
};

#[inline(always)]
fn descale(x: i32, n: i32) -> i32 {
    x.wrapping_add(1 << (n - 1)) >> n
}

/// The even and odd halves shared by both passes of `jpeg_idct_islow`;
/// returns the 8 outputs before descaling, in order 0..8.
#[inline(always)]
fn idct_1d(i: [i32; 8]) -> [i32; 8] {
    // Even part.
    let (z2, z3) = (i[2], i[6]);
    let z1 = z2.wrapping_add(z3).wrapping_mul(FIX_0_541196100);
    let tmp2 = z1.wrapping_add(z3.wrapping_mul(-FIX_1_847759065));
    let tmp3 = z1.wrapping_add(z2.wrapping_mul(FIX_0_765366865));
    let tmp0 = i[0].wrapping_add(i[4]).wrapping_shl(CONST_BITS as u32);
    let tmp1 = i[0].wrapping_sub(i[4]).wrapping_shl(CONST_BITS as u32);
    let tmp10 = tmp0.wrapping_add(tmp3);
    let tmp13 = tmp0.wrapping_sub(tmp3);
    let tmp11 = tmp1.wrapping_add(tmp2);
    let tmp12 = tmp1.wrapping_sub(tmp2);
    // Odd part.
    let (mut t0, mut t1, mut t2, mut t3) = (i[7], i[5], i[3], i[1]);
    let z1 = t0.wrapping_add(t3);
    let z2 = t1.wrapping_add(t2);
    let z3 = t0.wrapping_add(t2);
    let z4 = t1.wrapping_add(t3);
    let z5 = z3.wrapping_add(z4).wrapping_mul(FIX_1_175875602);
    t0 = t0.wrapping_mul(FIX_0_298631336);
    t1 = t1.wrapping_mul(FIX_2_053119869);
    t2 = t2.wrapping_mul(FIX_3_072711026);
    t3 = t3.wrapping_mul(FIX_1_501321110);
    let z1 = z1.wrapping_mul(-FIX_0_899976223);
    let z2 = z2.wrapping_mul(-FIX_2_562915447);
    let z3 = z3.wrapping_mul(-FIX_1_961570560).wrapping_add(z5);
    let z4 = z4.wrapping_mul(-FIX_0_390180644).wrapping_add(z5);
    t0 = t0.wrapping_add(z1).wrapping_add(z3);
    t1 = t1.wrapping_add(z2).wrapping_add(z4);
    t2 = t2.wrapping_add(z2).wrapping_add(z3);
    t3 = t3.wrapping_add(z1).wrapping_add(z4);
    [
        tmp10.wrapping_add(t3),
        tmp11.wrapping_add(t2),
        tmp12.wrapping_add(t1),
        tmp13.wrapping_add(t0),
        tmp13.wrapping_sub(t0),
        tmp12.wrapping_sub(t1),
        tmp11.wrapping_sub(t2),
        tmp10.wrapping_sub(t3),
    ]
}

/// `jpeg_idct_islow`: dequantise `coef` (natural order) with `q` and write
/// the 8x8 samples at `out` (row stride `stride`).
fn idct_islow(coef: &[i16; 64], q: &[u16; 64], out: &mut [u8], stride: usize) {
    // A block with only a DC term is flat; this is what the C code's
    // zero-column and zero-row shortcuts compute for it.
    if coef[1..].iter().all(|&c| c == 0) {
        let dc = i32::from(coef[0])
            .wrapping_mul(i32::from(q[0]))
            .wrapping_shl(PASS1_BITS as u32);
        let v = IDCT_LIMIT[(descale(dc, PASS1_BITS + 3) & 1023) as usize];
        for row in out.chunks_mut(stride).take(8) {
            row[..8].fill(v);
        }
        return;
    }
    let mut ws = [0i32; 64];
    // Pass 1: columns.
    for c in 0..8 {
        let mut col = [0i32; 8];
        let mut ac = false;
        for (r, v) in col.iter_mut().enumerate() {
            let x = coef[r * 8 + c];
            ac |= r > 0 && x != 0;
            *v = i32::from(x).wrapping_mul(i32::from(q[r * 8 + c]));
        }
        if !ac {
            let dc = col[0].wrapping_shl(PASS1_BITS as u32);
            for r in 0..8 {
                ws[r * 8 + c] = dc;
            }
            continue;
        }
        let o = idct_1d(col);
        for r in 0..8 {
            ws[r * 8 + c] = descale(o[r], CONST_BITS - PASS1_BITS);
        }
    }
    // Pass 2: rows.
    for (w, row) in ws.chunks_exact(8).zip(out.chunks_mut(stride)) {
        let w: [i32; 8] = [w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]];
        let row = &mut row[..8];
        if w[1..].iter().all(|&v| v == 0) {
            row.fill(IDCT_LIMIT[(descale(w[0], PASS1_BITS + 3) & 1023) as usize]);
            continue;
        }
        let o = idct_1d(w);
        for (px, v) in row.iter_mut().zip(o) {
            *px = IDCT_LIMIT[(descale(v, CONST_BITS + PASS1_BITS + 3) & 1023) as usize];
        }
    }
}

const FIX_0_211164243: i64 = 1730;
const FIX_0_509795579: i64 = 4176;
const FIX_0_601344887: i64 = 4926;
const FIX_0_720959822: i64 = 5906;
const FIX_0_850430095: i64 = 6967;
const FIX_1_061594337: i64 = 8697;
const FIX_1_272758580: i64 = 10426;
const FIX_1_451774981: i64 = 11893;
const FIX_2_172734803: i64 = 17799;
const FIX_3_624509785: i64 = 29692;

#[inline(always)]
fn descale64(x: i64, n: i64) -> i64 {
    x.wrapping_add(1 << (n - 1)) >> n
}

#[inline(always)]
fn limit64(x: i64) -> u8 {
    IDCT_LIMIT[(x as i32 & 1023) as usize]
}

/// The dequantised coefficient at natural index `i`.
#[inline(always)]
fn dq(coef: &[i16; 64], q: &[u16; 64], i: usize) -> i64 {
    i64::from(coef[i]) * i64::from(q[i])
}

/// The IDCT producing `size` x `size` samples from an 8x8 block (8:
/// [`idct_islow`]; 4, 2, 1: libjpeg's reduced transforms).
fn idct_sized(coef: &[i16; 64], q: &[u16; 64], out: &mut [u8], stride: usize, size: usize) {
    match size {
        8 => idct_islow(coef, q, out, stride),
        4 => idct_4x4(coef, q, out, stride),
        2 => idct_2x2(coef, q, out, stride),
        _ => out[0] = idct_1x1(coef[0], q[0]),
    }
}

/// `jpeg_idct_1x1`: a block's one sample at 1/8, from its DC coefficient
/// `dc` and quantiser `q0` alone.
#[inline(always)]
fn idct_1x1(dc: i16, q0: u16) -> u8 {
    limit64(descale64(i64::from(dc) * i64::from(q0), 3))
}

/// The even and odd terms of `jidctred.c`'s 8-to-4 step over inputs
/// `x[0..8]` (column 4 is not used); returns the four outputs before
/// descaling.
#[inline(always)]
fn idct_1d_4(x: [i64; 8], dc_shift: u32) -> [i64; 4] {
    let tmp0 = x[0] << dc_shift;
    let tmp2 = x[2] * i64::from(FIX_1_847759065) + x[6] * -i64::from(FIX_0_765366865);
    let (tmp10, tmp12) = (tmp0 + tmp2, tmp0 - tmp2);
    let (z1, z2, z3, z4) = (x[7], x[5], x[3], x[1]);
    let t0 =
        z1 * -FIX_0_211164243 + z2 * FIX_1_451774981 + z3 * -FIX_2_172734803 + z4 * FIX_1_061594337;
    let t2 = z1 * -FIX_0_509795579
        + z2 * -FIX_0_601344887
        + z3 * i64::from(FIX_0_899976223)
        + z4 * i64::from(FIX_2_562915447);
    [tmp10 + t2, tmp12 + t0, tmp12 - t0, tmp10 - t2]
}

/// `jpeg_idct_4x4`: a 4x4 block from an 8x8 one.
fn idct_4x4(coef: &[i16; 64], q: &[u16; 64], out: &mut [u8], stride: usize) {
    let cb = i64::from(CONST_BITS);
    let pb = i64::from(PASS1_BITS);
    let mut ws = [0i32; 32];
    for c in (0..8).filter(|&c| c != 4) {
        let x: [i64; 8] = std::array::from_fn(|r| dq(coef, q, r * 8 + c));
        if [1, 2, 3, 5, 6, 7].iter().all(|&r| coef[r * 8 + c] == 0) {
            let dc = (x[0] << PASS1_BITS) as i32;
            for r in 0..4 {
                ws[r * 8 + c] = dc;
            }
            continue;
        }
        let o = idct_1d_4(x, (CONST_BITS + 1) as u32);
        for r in 0..4 {
            ws[r * 8 + c] = descale64(o[r], cb - pb + 1) as i32;
        }
    }
    for (w, row) in ws.chunks_exact(8).zip(out.chunks_mut(stride)) {
        let row = &mut row[..4];
        if [1, 2, 3, 5, 6, 7].iter().all(|&i| w[i] == 0) {
            row.fill(limit64(descale64(i64::from(w[0]), pb + 3)));
            continue;
        }
        let x: [i64; 8] = std::array::from_fn(|i| i64::from(w[i]));
        let o = idct_1d_4(x, (CONST_BITS + 1) as u32);
        for (px, v) in row.iter_mut().zip(o) {
            *px = limit64(descale64(v, cb + pb + 3 + 1));
        }
    }
}

/// `jidctred.c`'s 8-to-2 step: the two outputs before descaling.
#[inline(always)]
fn idct_1d_2(x0: i64, x1: i64, x3: i64, x5: i64, x7: i64) -> [i64; 2] {
    let tmp10 = x0 << (CONST_BITS + 2);
    let tmp0 =
        x7 * -FIX_0_720959822 + x5 * FIX_0_850430095 + x3 * -FIX_1_272758580 + x1 * FIX_3_624509785;
    [tmp10 + tmp0, tmp10 - tmp0]
}

/// `jpeg_idct_2x2`: a 2x2 block from an 8x8 one.
fn idct_2x2(coef: &[i16; 64], q: &[u16; 64], out: &mut [u8], stride: usize) {
    let cb = i64::from(CONST_BITS);
    let pb = i64::from(PASS1_BITS);
    let mut ws = [0i32; 16];
    for c in [0, 1, 3, 5, 7] {
        if [1, 3, 5, 7].iter().all(|&r| coef[r * 8 + c] == 0) {
            let dc = (dq(coef, q, c) << PASS1_BITS) as i32;
            ws[c] = dc;
            ws[8 + c] = dc;
            continue;
        }
        let d = |r: usize| dq(coef, q, r * 8 + c);
        let o = idct_1d_2(d(0), d(1), d(3), d(5), d(7));
        ws[c] = descale64(o[0], cb - pb + 2) as i32;
        ws[8 + c] = descale64(o[1], cb - pb + 2) as i32;
    }
    for (w, row) in ws.chunks_exact(8).zip(out.chunks_mut(stride)) {
        let row = &mut row[..2];
        if [1, 3, 5, 7].iter().all(|&i| w[i] == 0) {
            row.fill(limit64(descale64(i64::from(w[0]), pb + 3)));
            continue;
        }
        let x = |i: usize| i64::from(w[i]);
        let o = idct_1d_2(x(0), x(1), x(3), x(5), x(7));
        row[0] = limit64(descale64(o[0], cb + pb + 3 + 2));
        row[1] = limit64(descale64(o[1], cb + pb + 3 + 2));
    }
}

// --------------------------------------------------------------- decoder

#[derive(Default, Clone)]
struct Component {
    id: u8,
    h: usize,
    v: usize,
    tq: usize,
    /// Quantisation table latched at the component's first scan (libjpeg).
    qt: Option<[u16; 64]>,
    /// Blocks coded in a non-interleaved scan.
    bw: usize,
    bh: usize,
    /// Blocks allocated (whole MCUs).
    bw_alloc: usize,
    bh_alloc: usize,
    /// Samples per block side after the IDCT (libjpeg's `DCT_scaled_size`):
    /// 8 unless decoding reduced.
    size: usize,
    /// Samples, `bw_alloc * size` per row.
    plane: Vec<u8>,
    /// Progressive only: each block's DC coefficient, row-major blocks. A
    /// plane of its own, two bytes a block: the DC scans touch every block
    /// for a bit or a few, and through 128-byte blocks each of those
    /// touches was a cache line of its own (perf put the DC scans at a
    /// third of a progressive decode, most of it on the refinement's
    /// one-bit update).
    dc: Vec<i16>,
    /// Progressive only, where [`Component::keeps_ac`]: 64 coefficients a
    /// block in zigzag order (so a scan's band is contiguous; the first,
    /// the DC one, is unused: it is in `dc`), row-major blocks.
    coefs: Vec<i16>,
    dc_pred: i32,
    dc_table: usize,
    ac_table: usize,
}

impl Component {
    /// Whether a progressive JPEG's AC coefficients are kept for this
    /// component: not where the IDCT is 1x1 (a 1/8 reduction), which reads
    /// the DC one alone — the AC scans of such a component are then
    /// skipped unread.
    fn keeps_ac(&self) -> bool {
        self.size > 1
    }
}

/// The position of the marker that ends the entropy-coded data starting at
/// `pos` (restart markers and stuffed bytes are part of it), or the end of
/// `data`: how a scan nobody needs is skipped without decoding it.
fn skip_entropy_data(data: &[u8], mut pos: usize) -> usize {
    loop {
        let Some(at) = data
            .get(pos..)
            .and_then(|rest| rest.iter().position(|&b| b == 0xFF))
        else {
            return data.len();
        };
        let marker = pos + at;
        let mut next = marker + 1;
        while data.get(next) == Some(&0xFF) {
            next += 1;
        }
        match data.get(next) {
            None => return data.len(),
            Some(0x00 | 0xD0..=0xD7) => pos = next + 1,
            Some(_) => return marker,
        }
    }
}

#[derive(Default)]
struct Decoder {
    qt: [Option<[u16; 64]>; 4],
    dc: [Option<Huffman>; 4],
    ac: [Option<Huffman>; 4],
    comps: Vec<Component>,
    width: usize,
    height: usize,
    hmax: usize,
    vmax: usize,
    /// Samples per block side of the most reduced component (libjpeg's
    /// `min_DCT_scaled_size`): 8 over the reduction.
    min_size: usize,
    mcus_x: usize,
    mcus_y: usize,
    progressive: bool,
    restart_interval: usize,
    eobrun: u32,
    jfif: bool,
    adobe_transform: Option<u8>,
    eoi: bool,
}

fn be16(data: &[u8], at: usize) -> Result<usize> {
    match data.get(at..at + 2) {
        Some(b) => Ok(usize::from(b[0]) << 8 | usize::from(b[1])),
        None => Err("truncated header"),
    }
}

impl Decoder {
    fn run(&mut self, data: &[u8]) -> Result<()> {
        if data.get(..2) != Some(&[0xFF, 0xD8]) {
            return Err("no SOI marker");
        }
        let mut pos = 2;
        loop {
            // Find the next marker (skipping any garbage and fill bytes).
            while pos < data.len() && data[pos] != 0xFF {
                pos += 1;
            }
            while pos < data.len() && data[pos] == 0xFF {
                pos += 1;
            }
            let Some(&marker) = data.get(pos) else {
                return Err("no EOI marker");
            };
            pos += 1;
            match marker {
                0xD8 | 0x01 | 0xD0..=0xD7 => {}
                0xD9 => {
                    self.eoi = true;
                    return Ok(());
                }
                0xC0..=0xC2 => {
                    let len = be16(data, pos)?;
                    let seg = data.get(pos + 2..pos + len).ok_or("truncated SOF")?;
                    self.frame(seg, marker == 0xC2)?;
                    pos += len;
                }
                0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => {
                    return Err("lossless, hierarchical or arithmetic-coded JPEG")
                }
                0xC4 => {
                    let len = be16(data, pos)?;
                    let seg = data.get(pos + 2..pos + len).ok_or("truncated DHT")?;
                    self.huffman_tables(seg)?;
                    pos += len;
                }
                0xDB => {
                    let len = be16(data, pos)?;
                    let seg = data.get(pos + 2..pos + len).ok_or("truncated DQT")?;
                    self.quant_tables(seg)?;
                    pos += len;
                }
                0xDD => {
                    self.restart_interval = be16(data, pos + 2)?;
                    pos += be16(data, pos)?;
                }
                0xDA => {
                    let len = be16(data, pos)?;
                    let seg = data.get(pos + 2..pos + len).ok_or("truncated SOS")?;
                    pos = self.scan(seg, data, pos + len)?;
                }
                0xE0 => {
                    let len = be16(data, pos)?;
                    if data.get(pos + 2..pos + 7) == Some(b"JFIF\0") {
                        self.jfif = true;
                    }
                    pos += len;
                }
                0xEE => {
                    let len = be16(data, pos)?;
                    if len >= 14 && data.get(pos + 2..pos + 7) == Some(b"Adobe") {
                        self.adobe_transform = data.get(pos + 13).copied();
                    }
                    pos += len;
                }
                0xDC => return Err("DNL marker"),
                _ => pos += be16(data, pos)?,
            }
        }
    }

    fn quant_tables(&mut self, mut seg: &[u8]) -> Result<()> {
        while let Some(&pq_tq) = seg.first() {
            let (pq, tq) = (pq_tq >> 4, usize::from(pq_tq & 15));
            if tq > 3 || pq > 1 {
                return Err("bad DQT");
            }
            let n = if pq == 0 { 64 } else { 128 };
            let vals = seg.get(1..1 + n).ok_or("truncated DQT")?;
            let mut t = [0u16; 64];
            for k in 0..64 {
                t[NATURAL_ORDER[k]] = if pq == 0 {
                    u16::from(vals[k])
                } else {
                    u16::from(vals[2 * k]) << 8 | u16::from(vals[2 * k + 1])
                };
            }
            self.qt[tq] = Some(t);
            seg = &seg[1 + n..];
        }
        Ok(())
    }

    fn huffman_tables(&mut self, mut seg: &[u8]) -> Result<()> {
        while let Some(&tc_th) = seg.first() {
            let (tc, th) = (tc_th >> 4, usize::from(tc_th & 15));
            if tc > 1 || th > 3 {
                return Err("bad DHT");
            }
            let counts: [u8; 16] = seg
                .get(1..17)
                .ok_or("truncated DHT")?
                .try_into()
                .map_err(|_| "truncated DHT")?;
            let total: usize = counts.iter().map(|&c| usize::from(c)).sum();
            if total > 256 {
                return Err("bad DHT");
            }
            let values = seg.get(17..17 + total).ok_or("truncated DHT")?;
            if tc == 0 && values.iter().any(|&v| v > 15) {
                return Err("bad DC Huffman table");
            }
            let table = Huffman::new(&counts, values)?;
            if tc == 0 {
                self.dc[th] = Some(table);
            } else {
                self.ac[th] = Some(table);
            }
            seg = &seg[17 + total..];
        }
        Ok(())
    }

    fn frame(&mut self, seg: &[u8], progressive: bool) -> Result<()> {
        if !self.comps.is_empty() {
            return Err("second SOF marker");
        }
        if seg.len() < 6 || seg[0] != 8 {
            return Err("not an 8-bit JPEG");
        }
        self.progressive = progressive;
        self.height = be16(seg, 1)?;
        self.width = be16(seg, 3)?;
        let n = usize::from(seg[5]);
        if self.width == 0 || self.height == 0 {
            return Err("zero-sized frame");
        }
        if n != 1 && n != 3 {
            return Err("not a greyscale or 3-component JPEG");
        }
        for i in 0..n {
            let c = seg.get(6 + 3 * i..9 + 3 * i).ok_or("truncated SOF")?;
            let (h, v) = (usize::from(c[1] >> 4), usize::from(c[1] & 15));
            if !(1..=4).contains(&h) || !(1..=4).contains(&v) || c[2] > 3 {
                return Err("bad sampling factors");
            }
            self.comps.push(Component {
                id: c[0],
                h,
                v,
                tq: usize::from(c[2]),
                ..Component::default()
            });
        }
        self.hmax = self.comps.iter().map(|c| c.h).max().unwrap_or(1);
        self.vmax = self.comps.iter().map(|c| c.v).max().unwrap_or(1);
        if self
            .comps
            .iter()
            .any(|c| !self.hmax.is_multiple_of(c.h) || !self.vmax.is_multiple_of(c.v))
        {
            return Err("non-integer sampling ratio");
        }
        self.mcus_x = self.width.div_ceil(8 * self.hmax);
        self.mcus_y = self.height.div_ceil(8 * self.vmax);
        let (w, h, hmax, vmax) = (self.width, self.height, self.hmax, self.vmax);
        let min = self.min_size;
        for c in &mut self.comps {
            c.bw = (w * c.h).div_ceil(hmax).div_ceil(8);
            c.bh = (h * c.v).div_ceil(vmax).div_ceil(8);
            c.bw_alloc = self.mcus_x * c.h;
            c.bh_alloc = self.mcus_y * c.v;
            // jdmaster.c: scale chroma up in the IDCT rather than in the
            // upsampler where the sampling factors allow.
            c.size = min;
            while c.size < 8
                && (hmax * min).is_multiple_of(c.h * c.size * 2)
                && (vmax * min).is_multiple_of(c.v * c.size * 2)
            {
                c.size *= 2;
            }
            // Never-coded blocks decode to mid-grey, as in libjpeg.
            c.plane = vec![128u8; c.bw_alloc * c.size * c.bh_alloc * c.size];
            if progressive {
                let blocks = c.bw_alloc * c.bh_alloc;
                c.dc = vec![0i16; blocks];
                if c.keeps_ac() {
                    c.coefs = vec![0i16; blocks * 64];
                }
            }
        }
        Ok(())
    }

    /// Decodes one scan; returns the position after its entropy-coded data.
    fn scan(&mut self, seg: &[u8], data: &[u8], start: usize) -> Result<usize> {
        if self.comps.is_empty() {
            return Err("SOS before SOF");
        }
        let ns = usize::from(*seg.first().ok_or("truncated SOS")?);
        if ns == 0 || ns > 4 || seg.len() < 4 + 2 * ns {
            return Err("bad SOS");
        }
        let mut members = Vec::with_capacity(ns);
        for i in 0..ns {
            let (id, tables) = (seg[1 + 2 * i], seg[2 + 2 * i]);
            let ci = self
                .comps
                .iter()
                .position(|c| c.id == id)
                .ok_or("scan names an unknown component")?;
            let c = &mut self.comps[ci];
            c.dc_table = usize::from(tables >> 4) & 3;
            c.ac_table = usize::from(tables & 15) & 3;
            if c.qt.is_none() {
                c.qt = Some(self.qt[c.tq].ok_or("missing quantisation table")?);
            }
            members.push(ci);
        }
        let p = 1 + 2 * ns;
        let (ss, se, ah, al) = (
            usize::from(seg[p]),
            usize::from(seg[p + 1]),
            u32::from(seg[p + 2] >> 4),
            u32::from(seg[p + 2] & 15),
        );
        if self.progressive {
            let ok = if ss == 0 {
                se == 0
            } else {
                ss <= se && se <= 63 && ns == 1
            };
            if !ok || al > 13 || ah > 13 {
                return Err("bad progressive scan parameters");
            }
        }
        // AC scans of a component reduced to 1x1 blocks carry nothing its
        // IDCT reads (libjpeg decodes them all the same; the output is
        // identical): most of a progressive file's entropy decoding.
        if self.progressive && ss > 0 && members.iter().all(|&ci| !self.comps[ci].keeps_ac()) {
            return Ok(skip_entropy_data(data, start));
        }
        for &ci in &members {
            self.comps[ci].dc_pred = 0;
        }
        self.eobrun = 0;
        let mut bits = Bits::new(data, start);

        let single = members.len() == 1;
        let (mx, my) = if single {
            let c = &self.comps[members[0]];
            (c.bw, c.bh)
        } else {
            (self.mcus_x, self.mcus_y)
        };
        if self.progressive && ss == 0 {
            self.dc_scan(&mut bits, &members, (mx, my), ah, al)?;
            if bits.overran() {
                return Err("data ends inside a scan");
            }
            return Ok(bits.pos);
        }
        let mut todo = self.restart_interval;
        // An AC first scan of a progressive JPEG skips the blocks of an end-
        // of-band run without reading anything.
        let ac_first = self.progressive && ss > 0 && ah == 0;
        for mcu_y in 0..my {
            for mcu_x in 0..mx {
                if self.restart_interval > 0 {
                    if todo == 0 {
                        bits.restart()?;
                        for &ci in &members {
                            self.comps[ci].dc_pred = 0;
                        }
                        self.eobrun = 0;
                        todo = self.restart_interval;
                    }
                    todo -= 1;
                }
                if single {
                    if ac_first && self.eobrun > 0 {
                        self.eobrun -= 1;
                        continue;
                    }
                    self.block(&mut bits, members[0], mcu_y, mcu_x, (ss, se, ah, al))?;
                    continue;
                }
                for &ci in &members {
                    let (h, v) = (self.comps[ci].h, self.comps[ci].v);
                    for by in 0..v {
                        for bx in 0..h {
                            let (row, col) = (mcu_y * v + by, mcu_x * h + bx);
                            self.block(&mut bits, ci, row, col, (ss, se, ah, al))?;
                        }
                    }
                }
            }
        }
        if bits.overran() {
            return Err("data ends inside a scan");
        }
        Ok(bits.pos)
    }

    /// A progressive DC scan (jdphuff.c `decode_mcu_DC_first` and
    /// `decode_mcu_DC_refine`) over `members`' blocks, `(mx, my)` MCUs (or
    /// blocks, for one component), into the components' DC planes: a loop
    /// of its own, without [`Decoder::block`]'s per-block dispatch, which
    /// costs as much as the one or few bits a DC coefficient takes.
    fn dc_scan(
        &mut self,
        bits: &mut Bits<'_>,
        members: &[usize],
        (mx, my): (usize, usize),
        ah: u32,
        al: u32,
    ) -> Result<()> {
        let single = members.len() == 1;
        let restart_interval = self.restart_interval;
        let mut todo = restart_interval;
        let (dc_tables, comps) = (&self.dc, &mut self.comps);
        for mcu_y in 0..my {
            for mcu_x in 0..mx {
                if restart_interval > 0 {
                    if todo == 0 {
                        bits.restart()?;
                        for &ci in members {
                            comps[ci].dc_pred = 0;
                        }
                        todo = restart_interval;
                    }
                    todo -= 1;
                }
                for &ci in members {
                    let c = &mut comps[ci];
                    let (h, v) = if single { (1, 1) } else { (c.h, c.v) };
                    let (row, col) = (mcu_y * v, mcu_x * h);
                    if row + v > c.bh_alloc || col + h > c.bw_alloc {
                        return Err("block outside the frame");
                    }
                    for row in row..row + v {
                        let dcs =
                            c.dc.get_mut(row * c.bw_alloc + col..)
                                .and_then(|dcs| dcs.get_mut(..h))
                                .ok_or("internal: a block outside the DC plane")?;
                        if ah == 0 {
                            let table = dc_tables[c.dc_table].as_ref().ok_or("missing DC table")?;
                            for dc in dcs {
                                let diff = bits.dc_difference(table)?;
                                c.dc_pred = c.dc_pred.wrapping_add(diff);
                                *dc = c.dc_pred.wrapping_shl(al) as i16;
                            }
                        } else {
                            // One bit a block, taken from the buffer held in
                            // locals (registers), as `ac_coefficients` does.
                            let bit = (1i32 << al) as i16;
                            let (mut acc, mut n) = (bits.acc, bits.n);
                            for dc in dcs {
                                if n == 0 {
                                    (bits.acc, bits.n) = (acc, n);
                                    bits.fill();
                                    (acc, n) = (bits.acc, bits.n);
                                }
                                *dc |= bit & -((acc >> 63) as i16);
                                acc <<= 1;
                                n -= 1;
                            }
                            (bits.acc, bits.n) = (acc, n);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn block(
        &mut self,
        bits: &mut Bits<'_>,
        ci: usize,
        row: usize,
        col: usize,
        (ss, se, ah, al): (usize, usize, u32, u32),
    ) -> Result<()> {
        let progressive = self.progressive;
        let c = &mut self.comps[ci];
        if row >= c.bh_alloc || col >= c.bw_alloc {
            return Err("block outside the frame");
        }
        let (dc_table, ac_table) = (c.dc_table, c.ac_table);
        if !progressive {
            let dc = self.dc[dc_table].as_ref().ok_or("missing DC table")?;
            let ac = self.ac[ac_table].as_ref().ok_or("missing AC table")?;
            return baseline_block(bits, c, dc, ac, row, col);
        }

        // DC scans are `dc_scan`'s, and AC scans of a component without AC
        // coefficients are skipped unread (`Decoder::scan`).
        if ss == 0 {
            return Err("internal: a DC scan in the AC block decoder");
        }
        if !c.keeps_ac() {
            return Err("internal: an AC scan of a component kept at its DC coefficients");
        }
        let at = (row * c.bw_alloc + col) * 64;
        let coef = &mut c.coefs[at..at + 64];
        let ac = self.ac[ac_table].as_ref().ok_or("missing AC table")?;
        if ah == 0 {
            // jdphuff.c decode_mcu_AC_first.
            if self.eobrun > 0 {
                self.eobrun -= 1;
                return Ok(());
            }
            let store = |k: usize, v: i16| coef[k.min(63)] = i32::from(v).wrapping_shl(al) as i16;
            if let Some(r) = ac_coefficients(bits, ac, (ss, se), store)? {
                self.eobrun = 1 << r;
                if r != 0 {
                    self.eobrun += bits.bits(r);
                }
                self.eobrun -= 1;
            }
            return Ok(());
        }
        // jdphuff.c decode_mcu_AC_refine, with the walk over the band done on
        // a bitmask of the coefficients already nonzero instead of one
        // coefficient at a time (the same bits are read in the same order).
        let p1 = (1i32 << al) as i16;
        let m1 = ((-1i32) << al) as i16;
        let coef: &mut [i16; 64] = coef.try_into().map_err(|_| "internal")?;
        // Refining keeps a nonzero coefficient nonzero, so the mask only
        // changes where a new coefficient is set.
        let mut nonzero = nonzero_mask(coef);
        let band = bit_range(ss, se);
        let refine_between =
            |bits: &mut Bits<'_>, coef: &mut [i16; 64], from: usize, to: usize, nonzero: u64| {
                let mut todo = nonzero & bit_range(from, to);
                while todo != 0 {
                    let v = &mut coef[todo.trailing_zeros() as usize];
                    refine_coefficient(bits.bit(), v, p1, m1);
                    todo &= todo - 1;
                }
            };
        let mut k = ss;
        if self.eobrun == 0 {
            while k <= se {
                let rs = bits.decode(ac)?;
                let r = u32::from(rs >> 4);
                let s = rs & 15;
                let mut newval = 0i16;
                if s != 0 {
                    newval = if bits.bit() { p1 } else { m1 };
                } else if r != 15 {
                    self.eobrun = 1 << r;
                    if r != 0 {
                        self.eobrun += bits.bits(r);
                    }
                    break;
                }
                // Refine the nonzero coefficients up to the (r+1)-th zero one
                // from k, which is where k stops (past the band if none).
                let mut zeros = !nonzero & band & bit_range(k, 63);
                for _ in 0..r {
                    zeros &= zeros.wrapping_sub(1);
                }
                let stop = if zeros == 0 {
                    se + 1
                } else {
                    zeros.trailing_zeros() as usize
                };
                if stop > k {
                    refine_between(bits, coef, k, stop - 1, nonzero);
                }
                k = stop;
                if newval != 0 {
                    let z = k.min(63);
                    coef[z] = newval;
                    nonzero |= 1 << z;
                }
                k += 1;
            }
        }
        if self.eobrun > 0 {
            if k <= se {
                refine_between(bits, coef, k, se, nonzero);
            }
            self.eobrun -= 1;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<DynamicImage> {
        if !self.eoi {
            return Err("no EOI marker");
        }
        if self.comps.is_empty() {
            return Err("no frame");
        }
        if self.progressive {
            for c in &mut self.comps {
                let Some(q) = c.qt else { continue };
                let n = c.size;
                let stride = c.bw_alloc * n;
                let dc_rows = c.dc.chunks_exact(c.bw_alloc);
                if n == 1 {
                    // 1x1 IDCTs: the DC coefficient alone, one sample per
                    // block.
                    for (dcs, samples) in dc_rows.zip(c.plane.chunks_exact_mut(stride)) {
                        for (&dc, sample) in dcs.iter().zip(samples.iter_mut()) {
                            *sample = idct_1x1(dc, q[0]);
                        }
                    }
                } else {
                    let block_rows = c.coefs.chunks_exact(64 * c.bw_alloc);
                    let rows = dc_rows.zip(block_rows);
                    for ((dcs, blocks), samples) in rows.zip(c.plane.chunks_exact_mut(n * stride)) {
                        let blocks = blocks.chunks_exact(64).map(<&[i16; 64]>::try_from);
                        for (col, (&dc, zigzag)) in dcs.iter().zip(blocks).enumerate() {
                            let zigzag = zigzag.map_err(|_| "internal")?;
                            // A gather with constant indices (unrolled).
                            let mut natural: [i16; 64] =
                                std::array::from_fn(|i| zigzag[ZIGZAG_ORDER[i]]);
                            natural[0] = dc;
                            idct_sized(&natural, &q, &mut samples[col * n..], stride, n);
                        }
                    }
                }
                c.dc = Vec::new();
                c.coefs = Vec::new();
            }
        }
        // jdmaster.c's output dimensions: ceil(size * min_size / 8).
        let min = self.min_size;
        let (w, h) = (
            (self.width * min).div_ceil(8),
            (self.height * min).div_ceil(8),
        );
        if self.comps.len() == 1 {
            let c = &self.comps[0];
            let stride = c.bw_alloc * c.size;
            let mut out = Vec::with_capacity(w * h);
            for y in 0..h {
                out.extend_from_slice(&c.plane[y * stride..y * stride + w]);
            }
            return GrayImage::from_raw(w as u32, h as u32, out)
                .map(DynamicImage::ImageLuma8)
                .ok_or("internal");
        }
        let ycc = self.is_ycc();
        let ups = self
            .comps
            .iter()
            .map(|c| Upsampler::new(c, (self.width, self.height), &self))
            .collect::<Result<Vec<Upsampler<'_>>>>()?;
        let mut rows = vec![vec![0u8; 2 * w + 16]; 3];
        let mut out = vec![0u8; w * h * 3];
        for (y, out_row) in out.chunks_exact_mut(w * 3).enumerate() {
            crate::avx2::dispatch!(
                output_row,
                output_row_avx2(&ups, &mut rows, y, ycc, out_row)
            );
        }
        RgbImage::from_raw(w as u32, h as u32, out)
            .map(DynamicImage::ImageRgb8)
            .ok_or("internal")
    }

    /// libjpeg's `default_decompress_parms` for three components.
    fn is_ycc(&self) -> bool {
        if self.jfif {
            return true;
        }
        if let Some(t) = self.adobe_transform {
            return t != 0;
        }
        let ids: Vec<u8> = self.comps.iter().map(|c| c.id).collect();
        ids != [b'R', b'G', b'B']
    }
}

#[inline(always)]
fn clamp8(v: i32) -> u8 {
    v.clamp(0, 255) as u8
}

/// Output row `y` (`out_row`: its RGB samples): each component's row
/// brought to full resolution by its upsampler into `rows`, then converted
/// (YCbCr, or copied as RGB).
#[inline(always)]
fn output_row(
    ups: &[Upsampler<'_>],
    rows: &mut [Vec<u8>],
    y: usize,
    ycc: bool,
    out_row: &mut [u8],
) {
    for (u, buf) in ups.iter().zip(rows.iter_mut()) {
        u.row(y, buf);
    }
    let w = out_row.len() / 3;
    let (r0, r1, r2) = (&rows[0][..w], &rows[1][..w], &rows[2][..w]);
    if ycc {
        for (((px, &yy), &cb), &cr) in out_row.chunks_exact_mut(3).zip(r0).zip(r1).zip(r2) {
            px.copy_from_slice(&ycc_to_rgb(yy, cb, cr));
        }
    } else {
        for (((px, &a), &b), &c) in out_row.chunks_exact_mut(3).zip(r0).zip(r1).zip(r2) {
            px.copy_from_slice(&[a, b, c]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn output_row_avx2(
    ups: &[Upsampler<'_>],
    rows: &mut [Vec<u8>],
    y: usize,
    ycc: bool,
    out_row: &mut [u8],
) {
    output_row(ups, rows, y, ycc, out_row)
}

/// `jdcolor.c`'s `ycc_rgb_convert` for one pixel, its tables
/// (`build_ycc_rgb_table`, SCALEBITS = 16) computed instead of looked up,
/// so that a row's loop vectorises: R = Y + round(1.402 Cr'),
/// G = Y + ((HALF - 0.34414 Cb' - 0.71414 Cr') >> 16), B = Y + round(1.772 Cb'),
/// with `Cb' = Cb - 128`, the constants in 16-bit fixed point.
#[inline(always)]
fn ycc_to_rgb(y: u8, cb: u8, cr: u8) -> [u8; 3] {
    const HALF: i32 = 1 << 15;
    // FIX(x) = x * 65536 + 0.5, truncated (checked in the tests).
    const FIX_1_40200: i32 = 91_881;
    const FIX_1_77200: i32 = 116_130;
    const FIX_0_71414: i32 = 46_802;
    const FIX_0_34414: i32 = 22_554;
    let (y, cb, cr) = (i32::from(y), i32::from(cb) - 128, i32::from(cr) - 128);
    [
        clamp8(y + ((FIX_1_40200 * cr + HALF) >> 16)),
        clamp8(y + ((HALF - FIX_0_34414 * cb - FIX_0_71414 * cr) >> 16)),
        clamp8(y + ((FIX_1_77200 * cb + HALF) >> 16)),
    ]
}

/// How one component is brought to full resolution (`jdsample.c`'s
/// `jinit_upsampler` choices, with fancy upsampling on, as by default).
enum Method {
    Full,
    H2V1Fancy,
    H1V2Fancy,
    H2V2Fancy,
    Replicate(usize, usize),
}

struct Upsampler<'a> {
    plane: &'a [u8],
    stride: usize,
    /// `downsampled_width` / `downsampled_height` in libjpeg.
    dw: usize,
    dh: usize,
    method: Method,
}

impl<'a> Upsampler<'a> {
    /// `jinit_upsampler`'s choice for component `c` of a `(w, h)` frame
    /// (full-size dimensions) decoded by `d`; declines the fractional
    /// ratios libjpeg refuses too.
    fn new(c: &'a Component, (w, h): (usize, usize), d: &Decoder) -> Result<Self> {
        let (hmax, vmax, min) = (d.hmax, d.vmax, d.min_size);
        // downsampled_width/height after IDCT scaling.
        let dw = (w * c.h * c.size).div_ceil(hmax * 8);
        let dh = (h * c.v * c.size).div_ceil(vmax * 8);
        // Samples of an "input group" after IDCT scaling.
        let (h_in, v_in) = (c.h * c.size / min, c.v * c.size / min);
        // jdmainct.c has no context rows at 1/8 scale.
        let fancy = min > 1;
        let method = match (h_in, v_in) {
            _ if h_in == hmax && v_in == vmax => Method::Full,
            _ if h_in * 2 == hmax && v_in == vmax && fancy && dw > 2 => Method::H2V1Fancy,
            _ if h_in == hmax && v_in * 2 == vmax && fancy => Method::H1V2Fancy,
            _ if h_in * 2 == hmax && v_in * 2 == vmax && fancy && dw > 2 => Method::H2V2Fancy,
            _ if hmax.is_multiple_of(h_in) && vmax.is_multiple_of(v_in) => {
                Method::Replicate(hmax / h_in, vmax / v_in)
            }
            _ => return Err("fractional sampling ratio"),
        };
        Ok(Self {
            plane: &c.plane,
            stride: c.bw_alloc * c.size,
            dw,
            dh,
            method,
        })
    }

    #[inline]
    fn input_row(&self, r: usize) -> &[u8] {
        &self.plane[r * self.stride..(r + 1) * self.stride]
    }

    /// The context row libjpeg pairs with input row `r` for output phase
    /// `v` (0: above, 1: below), replicated at the image edges.
    #[inline]
    fn far_row(&self, r: usize, v: usize) -> &[u8] {
        let f = if v == 0 {
            r.saturating_sub(1)
        } else {
            (r + 1).min(self.dh.saturating_sub(1))
        };
        self.input_row(f)
    }

    /// Writes full-resolution output row `y` into `out`, which must hold at
    /// least `self.out_len()` samples.
    #[inline(always)]
    fn row(&self, y: usize, out: &mut [u8]) {
        match self.method {
            Method::Full => {
                let n = out.len().min(self.stride);
                out[..n].copy_from_slice(&self.input_row(y)[..n]);
            }
            Method::Replicate(hs, vs) => {
                let inp = self.input_row(y / vs);
                for (o, &v) in out.chunks_mut(hs).zip(inp) {
                    o.fill(v);
                }
            }
            Method::H2V1Fancy => h2v1_fancy(&self.input_row(y)[..self.dw], out),
            Method::H1V2Fancy => {
                // h1v2_fancy_upsample.
                let (r, v) = (y / 2, y % 2);
                let near = self.input_row(r);
                let far = self.far_row(r, v);
                let bias = if v == 0 { 1 } else { 2 };
                for ((o, &a), &b) in out.iter_mut().zip(near).zip(far).take(self.dw) {
                    *o = ((u16::from(a) * 3 + u16::from(b) + bias) >> 2) as u8;
                }
            }
            Method::H2V2Fancy => {
                let (r, v) = (y / 2, y % 2);
                let near = &self.input_row(r)[..self.dw];
                let far = &self.far_row(r, v)[..self.dw];
                h2v2_fancy(near, far, out);
            }
        }
    }
}

/// `h2v1_fancy_upsample` for one row of `inp.len() > 2` samples; `out`
/// must hold at least `2 * inp.len()` samples.
#[inline(always)]
fn h2v1_fancy(inp: &[u8], out: &mut [u8]) {
    let n = inp.len();
    let out = &mut out[..2 * n];
    let g = |i: usize| u16::from(inp[i]);
    out[0] = inp[0];
    out[1] = ((g(0) * 3 + g(1) + 2) >> 2) as u8;
    for (o, w) in out[2..2 * n - 2].chunks_exact_mut(2).zip(inp.windows(3)) {
        let v = u16::from(w[1]) * 3;
        o[0] = ((v + u16::from(w[0]) + 1) >> 2) as u8;
        o[1] = ((v + u16::from(w[2]) + 2) >> 2) as u8;
    }
    out[2 * n - 2] = ((g(n - 1) * 3 + g(n - 2) + 1) >> 2) as u8;
    out[2 * n - 1] = inp[n - 1];
}

/// `h2v2_fancy_upsample` for one output row: `near` is the nearer input
/// row, `far` the context row (both `> 2` samples); `out` must hold at least
/// `2 * near.len()` samples.
#[inline(always)]
fn h2v2_fancy(near: &[u8], far: &[u8], out: &mut [u8]) {
    let n = near.len();
    let out = &mut out[..2 * n];
    let col = |i: usize| u16::from(near[i]) * 3 + u16::from(far[i]);
    let (c0, c1) = (col(0), col(1));
    out[0] = ((c0 * 4 + 8) >> 4) as u8;
    out[1] = ((c0 * 3 + c1 + 7) >> 4) as u8;
    let (mut last, mut this) = (c0, c1);
    for (i, o) in out[2..2 * n - 2].chunks_exact_mut(2).enumerate() {
        let next = u16::from(near[i + 2]) * 3 + u16::from(far[i + 2]);
        o[0] = ((this * 3 + last + 8) >> 4) as u8;
        o[1] = ((this * 3 + next + 7) >> 4) as u8;
        last = this;
        this = next;
    }
    out[2 * n - 2] = ((this * 3 + last + 8) >> 4) as u8;
    out[2 * n - 1] = ((this * 4 + 7) >> 4) as u8;
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        /// Set: Huffman tables are built without `fast_ac` and `fast_dc`,
        /// so a block reads every coefficient through `Bits::decode` and
        /// `Bits::bits`, handing the bit buffer over each time.
        pub(super) static NO_FAST_VALUES: std::cell::Cell<bool> =
            const { std::cell::Cell::new(false) };
    }

    /// `fast_ac` and `fast_dc` are shortcuts: without them (the bit buffer
    /// handed between a block's locals and `bits` for every coefficient,
    /// not for some) every fixture decodes to the same pixels, at full size
    /// and reduced.
    #[test]
    fn the_value_shortcuts_change_nothing() {
        for path in fixture_jpegs() {
            let data = std::fs::read(&path).unwrap();
            for r in [1, 2, 4, 8] {
                let with = decode_reduced(&data, r).unwrap();
                NO_FAST_VALUES.with(|off| off.set(true));
                let without = decode_reduced(&data, r);
                NO_FAST_VALUES.with(|off| off.set(false));
                let without = without.unwrap();
                assert_eq!(
                    with.as_bytes(),
                    without.as_bytes(),
                    "{} at 1/{r}",
                    path.display()
                );
            }
        }
    }

    #[test]
    fn idct_of_dc_only_block_is_flat() {
        let mut coef = [0i16; 64];
        coef[0] = 10;
        let q = [8u16; 64];
        let mut out = [0u8; 64];
        idct_islow(&coef, &q, &mut out, 8);
        // 10 * 8 / 8 = 10 above mid-grey.
        assert!(out.iter().all(|&v| v == 138), "{out:?}");
        assert_eq!(IDCT_LIMIT[(-129i32 & 1023) as usize], 0);
        assert_eq!(IDCT_LIMIT[(-128i32 & 1023) as usize], 0);
        assert_eq!(IDCT_LIMIT[(127i32 & 1023) as usize], 255);
        assert_eq!(IDCT_LIMIT[(5i32 & 1023) as usize], 133);
    }

    /// The conversion gives what libjpeg's tables (`build_ycc_rgb_table`,
    /// built as the C code builds them) give, for every (Cb, Cr) and Y.
    #[test]
    fn ycc_conversion_matches_libjpegs_tables() {
        const HALF: i32 = 1 << 15;
        let fix = |x: f64| (x * 65536.0 + 0.5) as i32;
        let table = |f: &dyn Fn(i32) -> i32| -> Vec<i32> { (0..256).map(|i| f(i - 128)).collect() };
        let cr_r = table(&|x| (fix(1.40200) * x + HALF) >> 16);
        let cb_b = table(&|x| (fix(1.77200) * x + HALF) >> 16);
        let cr_g = table(&|x| -fix(0.71414) * x);
        let cb_g = table(&|x| -fix(0.34414) * x + HALF);
        assert_eq!(
            (cr_r[255], cr_r[0], cb_b[255], cb_b[0]),
            (178, -179, 225, -227)
        );
        for cb in 0..=255u8 {
            for cr in 0..=255u8 {
                let (b, r) = (usize::from(cb), usize::from(cr));
                for y in [0u8, 1, 77, 128, 200, 254, 255] {
                    let yy = i32::from(y);
                    let expected = [
                        clamp8(yy + cr_r[r]),
                        clamp8(yy + ((cb_g[b] + cr_g[r]) >> 16)),
                        clamp8(yy + cb_b[b]),
                    ];
                    assert_eq!(ycc_to_rgb(y, cb, cr), expected, "Y {y} Cb {cb} Cr {cr}");
                }
            }
        }
    }

    /// The JPEG fixtures of tests/data/jpeg.
    fn fixture_jpegs() -> Vec<std::path::PathBuf> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/jpeg");
        let mut paths: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().and_then(|e| e.to_str()) == Some("jpg"))
            .collect();
        paths.sort();
        paths
    }

    /// Asserts that `ours` equals Pillow's decode saved at `pillow_png`.
    fn assert_equals_pillow(ours: DynamicImage, pillow_png: &std::path::Path, what: &str) {
        let ours = ours.into_rgb8();
        let pillow = image::open(pillow_png).unwrap().into_rgb8();
        assert_eq!(ours.dimensions(), pillow.dimensions(), "{what}");
        let diff = ours
            .as_raw()
            .iter()
            .zip(pillow.as_raw())
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap_or(0);
        assert_eq!(diff, 0, "{what}");
    }

    /// Every variant in tests/data/jpeg decodes exactly as Pillow
    /// (libjpeg-turbo) decodes it.
    #[test]
    fn matches_libjpeg_turbo_exactly() {
        let paths = fixture_jpegs();
        for path in &paths {
            let ours = decode(&std::fs::read(path).unwrap())
                .unwrap_or_else(|e| panic!("{}: declined: {e}", path.display()));
            let what = path.display().to_string();
            assert_equals_pillow(ours, &path.with_extension("pillow.png"), &what);
        }
        assert_eq!(paths.len(), 11);
    }

    /// Every variant decoded at 1/2, 1/4 and 1/8 matches Pillow's `draft()`
    /// decode (libjpeg-turbo's scaled IDCT) exactly, where the image is big
    /// enough for Pillow to reduce it.
    #[test]
    fn reduced_decodes_match_libjpeg_turbo_exactly() {
        let mut n = 0;
        for path in fixture_jpegs() {
            let data = std::fs::read(&path).unwrap();
            let stem = path.file_stem().unwrap().to_str().unwrap();
            for r in [2, 4, 8] {
                let expected = path.with_file_name(format!("{stem}.pillow-r{r}.png"));
                if !expected.exists() {
                    continue;
                }
                let ours = decode_reduced(&data, r)
                    .unwrap_or_else(|e| panic!("{stem} at 1/{r}: declined: {e}"));
                assert_equals_pillow(ours, &expected, &format!("{stem} at 1/{r}"));
                n += 1;
            }
        }
        // 9 variants big enough for all three reductions, 1 (3x2) for 1/2.
        assert_eq!(n, 28);
        assert!(decode_reduced(&[0xFF, 0xD8], 3).is_err());
    }

    /// The bit reader returns the entropy-coded bytes with stuffing
    /// removed, then zeros from the marker on, whether it refills eight
    /// bytes at a time (no 0xFF ahead) or one at a time.
    #[test]
    fn bit_reader_unstuffs_bytes_and_stops_at_a_marker() {
        let mut state = 12345u32;
        let mut next = || {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (state >> 16) as u8
        };
        for stuffed_every in [3usize, 17, 1000] {
            // Payload bytes, each 0xFF written as 0xFF 0x00 (sometimes after
            // 0xFF fill bytes), then an EOI marker.
            let payload: Vec<u8> = (0..400)
                .map(|i| if i % stuffed_every == 0 { 0xFF } else { next() })
                .collect();
            let mut data = Vec::new();
            for (i, &b) in payload.iter().enumerate() {
                if b == 0xFF {
                    if i % 2 == 0 {
                        data.push(0xFF);
                    }
                    data.extend([0xFF, 0x00]);
                } else {
                    data.push(b);
                }
            }
            data.extend([0xFF, 0xD9]);
            let expected: Vec<bool> = payload
                .iter()
                .flat_map(|&b| (0..8).rev().map(move |i| b >> i & 1 == 1))
                .chain(std::iter::repeat_n(false, 40))
                .collect();
            let mut bits = Bits::new(&data, 0);
            let mut at = 0;
            for width in (1..=16).cycle().take(expected.len()) {
                if at + width > expected.len() {
                    break;
                }
                let want = expected[at..at + width]
                    .iter()
                    .fold(0u32, |v, &b| v << 1 | u32::from(b));
                assert_eq!(
                    bits.bits(width as u32),
                    want,
                    "bit {at}, every {stuffed_every}"
                );
                at += width;
            }
            assert!(bits.overran());
            assert_eq!(data[bits.pos..], [0xFF, 0xD9], "left on the marker");
        }
    }

    /// A skipped scan ends at the first marker that is neither a stuffed
    /// byte nor a restart marker, fill bytes included; without one, at the
    /// end of the data.
    #[test]
    fn skipped_scans_end_at_the_next_marker() {
        let scan = [
            0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD0, 0x56, 0xFF, 0xFF, 0x00, 0xFF, 0xD7, 0x78,
        ];
        for (marker, fill) in [(0xC4u8, 0usize), (0xDA, 2), (0xD9, 1)] {
            let mut data = vec![0xAB, 0xCD];
            data.extend(scan);
            data.extend(std::iter::repeat_n(0xFF, fill));
            data.extend([0xFF, marker, 0x00, 0x04]);
            assert_eq!(skip_entropy_data(&data, 2), 2 + scan.len(), "{marker:x}");
        }
        assert_eq!(skip_entropy_data(&scan, 0), scan.len());
        assert_eq!(skip_entropy_data(&[0x00, 0xFF], 0), 2);
        assert_eq!(skip_entropy_data(&[0x00, 0xFF], 5), 2);
    }

    /// Skipping a block's AC coefficients consumes exactly the bits that
    /// decoding them does, block after block, and fails where decoding
    /// fails: random entropy data (with stuffed bytes and a marker at the
    /// end) read through a table with the shape of the standard luminance
    /// AC table (codes of 2 to 16 bits, values of up to 10 bits).
    #[test]
    fn skipping_ac_coefficients_reads_what_decoding_them_reads() {
        let counts = [0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 125];
        // End of block, then every run/size by size and run, ZRL last.
        let mut values = vec![0x00u8];
        for size in 1..=10u8 {
            values.extend((0..16u8).map(|run| run << 4 | size));
        }
        values.push(0xF0);
        let ac = Huffman::new(&counts, &values).unwrap();
        let mut state = 99u32;
        let mut next = || {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (state >> 16) as u8
        };
        let mut blocks = 0;
        for _ in 0..20 {
            let mut data = Vec::new();
            for _ in 0..4000 {
                let b = next();
                data.push(b);
                if b == 0xFF {
                    data.push(0);
                }
            }
            data.extend([0xFF, 0xD9]);
            let (mut decoding, mut skipping) = (Bits::new(&data, 0), Bits::new(&data, 0));
            loop {
                let decoded = ac_coefficients(&mut decoding, &ac, (1, 63), |_, _| {}).map(|_| ());
                let skipped = skip_ac_coefficients(&mut skipping, &ac);
                assert_eq!(decoded, skipped, "block {blocks}");
                if decoded.is_err() || decoding.overran() {
                    assert_eq!(decoding.overran(), skipping.overran());
                    break;
                }
                // Both are at the same bit: the next bits agree.
                assert_eq!(decoding.bits(13), skipping.bits(13), "block {blocks}");
                blocks += 1;
            }
        }
        assert!(blocks > 1000, "only {blocks} blocks read");
    }

    /// Decoding at 1/8 keeps only the DC coefficients of 1x1 components and
    /// skips their AC scans, and still matches the full decode's layout: a
    /// progressive 4:4:4 file (every component 1x1) and a 4:2:0 one (chroma
    /// at 2x2 keeps all 64).
    #[test]
    fn one_eighth_keeps_dc_coefficients_only_where_the_idct_is_1x1() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/jpeg");
        for (name, expected) in [
            ("progressive_444", [false, false, false]),
            ("progressive_420", [false, true, true]),
        ] {
            let data = std::fs::read(dir.join(format!("{name}.jpg"))).unwrap();
            let mut d = Decoder {
                min_size: 1,
                ..Decoder::default()
            };
            d.run(&data).unwrap();
            let kept: Vec<bool> = d.comps.iter().map(Component::keeps_ac).collect();
            assert_eq!(kept, expected, "{name}");
            for c in &d.comps {
                let blocks = c.bw_alloc * c.bh_alloc;
                assert_eq!(c.dc.len(), blocks);
                assert_eq!(c.coefs.len(), if c.keeps_ac() { blocks * 64 } else { 0 });
            }
        }
    }

    #[test]
    fn zigzag_order_inverts_natural_order() {
        for k in 0..64 {
            assert_eq!(ZIGZAG_ORDER[NATURAL_ORDER[k]], k);
        }
        // jpeg_natural_order's first row, spelled out.
        assert_eq!(&NATURAL_ORDER[..8], &[0, 1, 8, 16, 9, 2, 3, 10]);
    }

    #[test]
    fn coefficient_masks_match_their_definition() {
        assert_eq!(bit_range(0, 63), u64::MAX);
        assert_eq!(bit_range(1, 5), 0b11_1110);
        assert_eq!(bit_range(63, 63), 1 << 63);
        let mut coef = [0i16; 64];
        for (k, c) in coef.iter_mut().enumerate() {
            *c = match k % 7 {
                0 => 0,
                1 => -1,
                2 => i16::MIN,
                3 => 0,
                _ => (k * 31) as i16,
            };
        }
        coef[63] = 5;
        let expected = (0..64).fold(0u64, |m, k| m | u64::from(coef[k] != 0) << k);
        assert_eq!(nonzero_mask(&coef), expected);
        assert_eq!(nonzero_mask(&[0; 64]), 0);
    }

    #[test]
    fn declines_what_it_does_not_reproduce() {
        assert!(decode(b"not a jpeg").is_err());
        assert!(decode(&[0xFF, 0xD8, 0xFF]).is_err());
    }
}
