"""VTAB-1k labels that are not a TFDS dataset's `label` feature (Zhai et al. 2019; the rules of
google-research/task_adaptation's data loaders, which the ViT paper's VTAB numbers use).

`config.input.label` names one; ClassificationTask then derives `label` from the raw example
before preprocessing. Each rule maps a raw TFDS example to an int label in 0..classes-1.
"""

import tensorflow as tf


def _bucket(value: tf.Tensor, thresholds) -> tf.Tensor:
  """The index of the last threshold that `value` reaches."""
  reached = tf.cast(value, tf.float32) >= tf.constant(thresholds, tf.float32)
  return tf.reduce_max(tf.where(reached)[:, 0])


def clevr_count(example):  # Number of objects, 3..10 -> 8 classes.
  return tf.size(example['objects']['size']) - 3


def clevr_distance(example):  # Depth of the closest object -> 6 bins.
  depth = tf.reduce_min(example['objects']['pixel_coords'][:, 2])
  return _bucket(depth, [0.0, 8.0, 8.5, 9.0, 9.5, 10.0])


def dsprites_location(example):  # x position, 32 values -> 16 bins.
  return example['label_x_position'] // 2


def dsprites_orientation(example):  # Orientation, 40 values -> 16 bins.
  return example['label_orientation'] * 16 // 40


def kitti_distance(example):  # Closest car, van or truck: < 8 m, < 20 m, farther, none.
  objects = example['objects']
  vehicles = objects['type'] < 3  # Car 0, Van 1, Truck 2.
  depth = tf.boolean_mask(objects['location'][:, 2], vehicles)
  closest = tf.reduce_min(tf.concat([depth, [1000.0]], 0))
  return _bucket(closest, [-100.0, 8.0, 20.0, 999.0])


def smallnorb_azimuth(example):  # 18 azimuths.
  return example['label_azimuth']


def smallnorb_elevation(example):  # 9 elevations.
  return example['label_elevation']


LABELS = {f.__name__: f for f in (clevr_count, clevr_distance, dsprites_location,
                                  dsprites_orientation, kitti_distance, smallnorb_azimuth,
                                  smallnorb_elevation)}
