//! Photo decoding and CLIP preprocessing for Glimpse.
//!
//! This crate turns a photo file (or bytes) into the pixels a CLIP model
//! takes, reproducing the reference — HF transformers' `CLIPImageProcessor`
//! with Pillow — bit for bit on the same RGB input. [`decode_path`] and
//! [`decode_bytes`] recognise the format from the content, refuse
//! decompression bombs before allocating (`PreprocessConfig::max_pixels`),
//! apply the EXIF orientation, handle alpha per [`AlphaMode`](glimpse_config::AlphaMode)
//! and return a [`DecodedImage`] (upright 8-bit RGB plus format, stored
//! size and orientation); every failure is a [`DecodeError`] naming the file
//! and what to do, and no input can make them panic. JPEGs go through a
//! decoder of this crate that reproduces libjpeg-turbo (Pillow's codec)
//! bit for bit — accurate integer IDCT, "fancy" chroma upsampling, its
//! YCbCr tables — for baseline and progressive 8-bit greyscale/YCbCr files;
//! other JPEG variants use the `image` crate, and so do other formats except
//! still WebP images, which libwebp (Pillow's codec, built from source)
//! decodes.
//! [`decode_bytes_reduced`] decodes large JPEGs at 1/2, 1/4 or 1/8 in the
//! inverse DCT (libjpeg-turbo's reduced transforms, as Pillow's `draft()`),
//! and large still WebPs in libwebp's rescaler, several times cheaper when
//! the model only needs 224 pixels; other large images are averaged down by
//! the same factor just after decoding, so that resizing costs less. [`to_pixels`] then
//! resizes the shortest side with a port of Pillow's bicubic resampler
//! ([`resize_shortest_side`]), centre-crops ([`center_crop`]) and
//! normalises into a channel-first `Vec<f32>`, computing only the cropped
//! window.
//!
//! It does *not* make thumbnails (yet), run the model (`glimpse-clip` does),
//! or decode HEIC/HEIF, AVIF, JPEG XL, JPEG 2000 or camera raw files: those
//! are recognised and refused with [`DecodeError::Unsupported`]. Only
//! JPEG, PNG, WebP, GIF (first frame), TIFF and BMP are decoded.
#![warn(missing_docs)]

mod avx2;
mod decode;
mod error;
mod jpeg;
mod pixels;
mod png_rows;
mod reduce;
mod resize;
mod rgb;
mod sniff;
mod webp;

pub use decode::{decode_bytes, decode_bytes_reduced, decode_path, DecodedImage};
pub use error::DecodeError;
pub use image::metadata::Orientation;
pub use image::{ImageFormat, RgbImage};
pub use pixels::{to_pixels, to_pixels_into};
pub use resize::{center_crop, resize_shortest_side, resized_dimensions};
