"""Face-appropriate augmentation, run batched inside tf.data (one geometric warp per image)."""

from __future__ import annotations

import math

import tensorflow as tf


def _affine_matrices(batch: int, size: int, max_degrees: float, max_zoom: float, max_shift: float, seed=None):
    """Per-image inverse affine maps (rotation + zoom + shift about the centre) for ImageProjectiveTransformV3."""
    angle = tf.random.uniform([batch], -1.0, 1.0) * (max_degrees * math.pi / 180.0)
    zoom = tf.exp(tf.random.uniform([batch], -1.0, 1.0) * math.log(1.0 + max_zoom))
    shift = tf.random.uniform([batch, 2], -1.0, 1.0) * (max_shift * size)
    centre = (size - 1) / 2.0
    cos, sin = tf.cos(angle) / zoom, tf.sin(angle) / zoom
    # input = R(-angle)/zoom · (output - centre) + centre - shift
    a0, a1 = cos, sin
    b0, b1 = -sin, cos
    a2 = centre - a0 * centre - a1 * centre - shift[:, 0]
    b2 = centre - b0 * centre - b1 * centre - shift[:, 1]
    zeros = tf.zeros([batch])
    return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)


def augment_batch(images: tf.Tensor) -> tf.Tensor:
    """images float32 (B, 48, 48, 1) in 0..255 → augmented, same range.

    Mirror (faces are near-symmetric), small rotation/zoom/shift (detector boxes wobble),
    brightness/contrast (lighting), and random erasing (hands, glasses, hair over the face).
    """
    batch = tf.shape(images)[0]
    size = images.shape[1]
    flip = tf.random.uniform([batch, 1, 1, 1]) < 0.5
    images = tf.where(flip, tf.reverse(images, axis=[2]), images)
    transforms = _affine_matrices(batch, size, max_degrees=12.0, max_zoom=0.12, max_shift=0.08)
    images = tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=[size, size], fill_value=0.0,
        interpolation="BILINEAR", fill_mode="REFLECT",
    )
    mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
    contrast = tf.random.uniform([batch, 1, 1, 1], 0.75, 1.3)
    brightness = tf.random.uniform([batch, 1, 1, 1], -25.0, 25.0)
    images = (images - mean) * contrast + mean + brightness
    # Random erasing: one rectangle of 2-12 % of the face, on half the images.
    area = tf.random.uniform([batch], 0.02, 0.12) * size * size
    aspect = tf.exp(tf.random.uniform([batch], math.log(0.5), math.log(2.0)))
    h = tf.sqrt(area * aspect)
    w = tf.sqrt(area / aspect)
    y0 = tf.random.uniform([batch]) * (size - h)
    x0 = tf.random.uniform([batch]) * (size - w)
    grid = tf.range(size, dtype=tf.float32)
    rows = (grid[None, :] >= y0[:, None]) & (grid[None, :] < (y0 + h)[:, None])
    cols = (grid[None, :] >= x0[:, None]) & (grid[None, :] < (x0 + w)[:, None])
    erase = rows[:, :, None] & cols[:, None, :] & (tf.random.uniform([batch, 1, 1]) < 0.5)
    noise = tf.random.uniform(tf.shape(images), 0.0, 255.0)
    images = tf.where(erase[..., None], noise, images)
    return tf.clip_by_value(images, 0.0, 255.0)
