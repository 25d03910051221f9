"""Pictures of what a model predicts, for TensorBoard and the notebooks (one place for both).

Every function takes numpy arrays and returns a uint8 RGB image, shape (height, width, 3):

  draw_classification  an image with its true and predicted class, and optionally an attention
                       map beside it (`attention_rollout` makes one from ViT's weights)
  draw_detections      ground-truth boxes beside the predicted ones (score threshold, top-k)
  draw_boxes           boxes with class names and scores on one image
  draw_segmentation    ground-truth and predicted label maps over the image, with a legend
  draw_segments        a segment-id map (e.g. panoptic segments) with a legend of their names
  colorize, legend     the colours of label maps and the legend that names them
  palette              the colour of each class id (the same everywhere: legends match masks)

Images may be uint8, or float in [-1, 1] or [0, 1] (`to_rgb`); small images are enlarged with
nearest-neighbour pixels so that a 16 x 16 digit is still legible next to its caption.
"""

import colorsys
from typing import Mapping, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Distinct colours for the first class ids (Tableau 20 with its greys swapped for colours that
# stand out on grey images); further ids get hues spaced by the golden ratio.
_BASE_COLOURS = np.array([
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (0, 95, 115), (188, 189, 34), (23, 190, 207),
    (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
    (196, 156, 148), (247, 182, 210), (255, 215, 0), (219, 219, 141), (158, 218, 229)],
    np.uint8)
BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)
CORRECT, WRONG = (0, 130, 0), (200, 0, 0)
MIN_SIDE = 128  # Images are enlarged until their shorter side is at least this many pixels.
_FONT_SIZE = 12


def palette(num: int) -> np.ndarray:
  """(num, 3) uint8: the colour of class ids 0..num-1; id k has the same colour for any num."""
  colours = list(_BASE_COLOURS[:num])
  for k in range(len(_BASE_COLOURS), num):
    hue = (k * 0.618033988749895) % 1.0
    colours.append(np.round(np.array(colorsys.hsv_to_rgb(hue, 0.65, 0.9)) * 255))
  return np.array(colours, np.uint8).reshape(num, 3)


def to_rgb(image: np.ndarray) -> np.ndarray:
  """uint8 (H, W, 3) from uint8 or float pixels; floats with negative values are taken to span
  [-1, 1] (ViT's input), floats up to 1 to span [0, 1], others [0, 255]; grey becomes RGB."""
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or image.shape[-1] not in (1, 3):
    raise ValueError(f'expected an image of shape (H, W), (H, W, 1) or (H, W, 3), got '
                     f'{image.shape}')
  if image.dtype != np.uint8:
    image = image.astype(np.float32)
    if image.min() < 0:
      image = (image + 1) * 127.5
    elif image.max() <= 1:
      image = image * 255
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
  return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image


def enlargement(shape: Sequence[int], min_side: int = MIN_SIDE) -> int:
  """The integer factor that makes an image of `shape` at least `min_side` on its shorter side."""
  return max(1, -(-min_side // max(1, min(shape[:2]))))


def enlarge(image: np.ndarray, factor: int) -> np.ndarray:
  """Each pixel repeated `factor` x `factor` times (sharp pixels, exact coordinates)."""
  return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1) if factor > 1 else image


def font(size: int = _FONT_SIZE) -> ImageFont.ImageFont:
  try:
    return ImageFont.load_default(size=size)
  except (TypeError, ImportError, OSError):  # Pillow < 10.1 or without FreeType.
    return ImageFont.load_default()


def _text_height() -> int:
  return _FONT_SIZE + 6


def with_caption(image: np.ndarray, lines: Sequence[str],
                 colours: Optional[Sequence[tuple]] = None) -> np.ndarray:
  """`image` above a strip of text lines (at least as wide as the longest line)."""
  if not lines:
    return image
  colours = colours or [TEXT] * len(lines)
  width = max([image.shape[1]] + [int(font().getlength(line)) + 8 for line in lines])
  canvas = Image.new('RGB', (width, image.shape[0] + _text_height() * len(lines)), BACKGROUND)
  canvas.paste(Image.fromarray(image), (0, 0))
  draw = ImageDraw.Draw(canvas)
  for i, (line, colour) in enumerate(zip(lines, colours)):
    draw.text((4, image.shape[0] + 3 + i * _text_height()), line, fill=tuple(colour), font=font())
  return np.array(canvas)


def side_by_side(panels: Sequence[np.ndarray], titles: Optional[Sequence[str]] = None,
                 gap: int = 6) -> np.ndarray:
  """Panels left to right, tops aligned, each under its title, on a white background."""
  if titles is not None:
    titled = []
    for panel, title in zip(panels, titles):
      header = with_caption(np.full((0, panel.shape[1], 3), 255, np.uint8), [title])
      width = max(panel.shape[1], header.shape[1])
      titled.append(np.concatenate([_pad_to(header, header.shape[0], width),
                                    _pad_to(panel, panel.shape[0], width)], axis=0))
    panels = titled
  height = max(p.shape[0] for p in panels)
  parts = []
  for i, panel in enumerate(panels):
    parts.append(_pad_to(panel, height, panel.shape[1]))
    if i < len(panels) - 1:
      parts.append(np.full((height, gap, 3), 255, np.uint8))
  return np.concatenate(parts, axis=1)


def _pad_to(image: np.ndarray, height: int, width: int) -> np.ndarray:
  out = np.full((height, width, 3), 255, np.uint8)
  out[:image.shape[0], :image.shape[1]] = image
  return out


def class_name(label: int, class_names: Optional[Sequence[str]] = None) -> str:
  """The class's name when there are names, else its number."""
  label = int(label)
  if class_names is not None and 0 <= label < len(class_names):
    return str(class_names[label])
  return str(label)


# Classification.

def attention_rollout(attentions: Sequence[np.ndarray]) -> np.ndarray:
  """Where the class token (token 0) looks, over all layers (Abnar & Zuidema 2020): each layer's
  weights [heads, tokens, tokens] (or [tokens, tokens]) averaged over heads, the residual added
  as the identity, rows renormalised, layers multiplied. Returns the weights of the tokens
  after the class token, (tokens - 1,)."""
  rollout = None
  for weights in attentions:
    weights = np.asarray(weights, np.float64)
    weights = weights.mean(0) if weights.ndim == 3 else weights
    weights = weights + np.eye(weights.shape[-1])
    weights = weights / weights.sum(-1, keepdims=True)
    rollout = weights if rollout is None else weights @ rollout
  return rollout[0, 1:]


def heatmap(values: np.ndarray) -> np.ndarray:
  """(H, W) values -> uint8 (H, W, 3), scaled to their own range: black, red, yellow, white."""
  values = np.asarray(values, np.float32)
  span = values.max() - values.min()
  v = (values - values.min()) / span if span > 0 else np.zeros_like(values)
  rgb = np.stack([np.clip(3 * v, 0, 1), np.clip(3 * v - 1, 0, 1), np.clip(3 * v - 2, 0, 1)], -1)
  return np.round(rgb * 255).astype(np.uint8)


def overlay(image: np.ndarray, colours: np.ndarray, alpha: float,
            where: Optional[np.ndarray] = None) -> np.ndarray:
  """`colours` blended over `image` with weight `alpha` (only where `where`, if given)."""
  blended = np.round((1 - alpha) * image + alpha * colours.astype(np.float32)).astype(np.uint8)
  return blended if where is None else np.where(where[..., None], blended, image)


def draw_classification(image: np.ndarray, true_label: int, predicted_label: int,
                        class_names: Optional[Sequence[str]] = None,
                        score: Optional[float] = None, attention: Optional[np.ndarray] = None,
                        min_side: int = MIN_SIDE) -> np.ndarray:
  """The image with 'true: A' and 'predicted: B (score)' under it, green when right and red when
  wrong; with `attention` (a (rows, cols) map over the image's patches, e.g.
  `attention_rollout(...).reshape(rows, cols)`) a heat map over the image beside it."""
  rgb = to_rgb(image)
  factor = enlargement(rgb.shape, min_side)
  panels, titles = [enlarge(rgb, factor)], ['image']
  if attention is not None:
    attention = np.asarray(attention)
    # Each patch's value covers its pixels (the image divides into the map's grid).
    cells = np.kron(attention, np.ones((rgb.shape[0] // attention.shape[0],
                                        rgb.shape[1] // attention.shape[1])))
    cells = _pad_to_shape(cells, rgb.shape[:2])
    panels.append(enlarge(overlay(rgb, heatmap(cells), 0.6), factor))
    titles.append('attention')
  right = int(true_label) == int(predicted_label)
  predicted = f'predicted: {class_name(predicted_label, class_names)}'
  if score is not None:
    predicted += f' ({float(score):.0%})'
  return with_caption(side_by_side(panels, titles),
                      [f'true: {class_name(true_label, class_names)}', predicted],
                      [TEXT, CORRECT if right else WRONG])


def _pad_to_shape(values: np.ndarray, shape: Sequence[int]) -> np.ndarray:
  """Edge-padded (or cropped) to `shape` (images whose side the patch size does not divide)."""
  values = values[:shape[0], :shape[1]]
  return np.pad(values, [(0, shape[0] - values.shape[0]), (0, shape[1] - values.shape[1])],
                mode='edge')


# Detection.

def draw_boxes(image: np.ndarray, boxes: np.ndarray, labels: Sequence[int],
               class_names: Optional[Sequence[str]] = None,
               scores: Optional[Sequence[float]] = None, width: int = 2) -> np.ndarray:
  """Boxes (N, 4) as (x0, y0, x1, y1) in `image`'s pixels, each in its class's colour, its
  class name (and score) in a tag at its top-left corner."""
  canvas = Image.fromarray(to_rgb(image))
  draw = ImageDraw.Draw(canvas)
  labels = [int(label) for label in labels]
  colours = palette(max(labels, default=0) + 1)
  for i, (box, label) in enumerate(zip(np.asarray(boxes, np.float32).reshape(-1, 4), labels)):
    colour = tuple(int(c) for c in colours[label])
    x0, y0, x1, y1 = (float(v) for v in box)
    draw.rectangle((x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)), outline=colour, width=width)
    text = class_name(label, class_names)
    if scores is not None:
      text += f' {float(scores[i]):.2f}'
    left, top, right, bottom = draw.textbbox((x0, y0), text, font=font())
    draw.rectangle((left, top, right + 2, bottom + 1), fill=colour)
    draw.text((x0 + 1, y0), text, fill=BACKGROUND, font=font())
  return np.array(canvas)


def draw_detections(image: np.ndarray, true_boxes: np.ndarray, true_labels: Sequence[int],
                    boxes: np.ndarray, labels: Sequence[int], scores: Sequence[float],
                    class_names: Optional[Sequence[str]] = None, threshold: float = 0.5,
                    top_k: int = 10, min_side: int = MIN_SIDE) -> np.ndarray:
  """Ground truth beside the predictions that score at least `threshold` (the best `top_k`).
  Boxes are (x0, y0, x1, y1) in `image`'s pixels."""
  rgb = to_rgb(image)
  factor = enlargement(rgb.shape, min_side)
  big = enlarge(rgb, factor)
  scores = np.asarray(scores, np.float32).reshape(-1)
  kept = [i for i in np.argsort(-scores, kind='stable')[:top_k] if scores[i] >= threshold]
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  truth = draw_boxes(big, np.asarray(true_boxes, np.float32).reshape(-1, 4) * factor,
                     true_labels, class_names)
  predicted = draw_boxes(big, boxes[kept] * factor, np.asarray(labels)[kept], class_names,
                         scores[kept])
  return side_by_side([truth, predicted],
                      ['ground truth', f'predicted (score >= {threshold:g}, top {top_k})'])


# Segmentation.

def colorize(label_map: np.ndarray, num_classes: Optional[int] = None,
             ignore_index: Optional[int] = None) -> np.ndarray:
  """(H, W) class ids -> uint8 (H, W, 3) in `palette` colours; `ignore_index` pixels black."""
  label_map = np.asarray(label_map).astype(np.int64)
  valid = label_map >= 0 if ignore_index is None else (label_map >= 0) & (label_map != ignore_index)
  ids = np.where(valid, label_map, 0)
  colours = palette(max(num_classes or 0, int(ids.max(initial=0)) + 1))
  return np.where(valid[..., None], colours[ids], 0).astype(np.uint8)


def legend(entries: Mapping[int, str], width: int, colours: Optional[np.ndarray] = None,
           swatch: int = 12) -> np.ndarray:
  """A strip `width` pixels wide naming each id: a square of its colour (`palette` unless
  `colours` gives them, indexed by id), then its name; entries wrap onto more rows."""
  entries = dict(sorted((int(k), str(v)) for k, v in entries.items()))
  if colours is None:
    colours = palette(max(entries, default=0) + 1)
  items, row, x = [], 0, 4
  for k, name in entries.items():
    item_width = swatch + 4 + int(font().getlength(name)) + 12
    if x > 4 and x + item_width > width:
      row, x = row + 1, 4
    items.append((k, name, x, row))
    x += item_width
  row_height = max(swatch, _text_height()) + 2
  canvas = Image.new('RGB', (width, (row + 1) * row_height + 4 if entries else 0), BACKGROUND)
  draw = ImageDraw.Draw(canvas)
  for k, name, x, r in items:
    top = 2 + r * row_height
    draw.rectangle((x, top + 2, x + swatch - 1, top + 1 + swatch),
                   fill=tuple(int(c) for c in colours[k]))
    draw.text((x + swatch + 4, top), name, fill=TEXT, font=font())
  return np.array(canvas)


def draw_segmentation(image: np.ndarray, true_map: np.ndarray, predicted_map: np.ndarray,
                      class_names: Sequence[str], ignore_index: Optional[int] = 255,
                      alpha: float = 0.6, min_side: int = MIN_SIDE) -> np.ndarray:
  """Image, ground truth and prediction side by side (label maps blended over the image; pixels
  labelled `ignore_index` left as they are), and a legend of the classes that appear in
  either map."""
  rgb = to_rgb(image)
  factor = enlargement(rgb.shape, min_side)
  num_classes = len(class_names)
  panels = [rgb]
  for label_map in (true_map, predicted_map):
    label_map = np.asarray(label_map)
    valid = label_map != ignore_index if ignore_index is not None else np.ones_like(label_map, bool)
    panels.append(overlay(rgb, colorize(label_map, num_classes, ignore_index), alpha, valid))
  picture = side_by_side([enlarge(p, factor) for p in panels],
                         ['image', 'ground truth', 'predicted'])
  present = np.unique(np.concatenate([np.asarray(true_map).ravel(),
                                      np.asarray(predicted_map).ravel()]))
  entries = {int(k): class_name(k, class_names) for k in present
             if k != ignore_index and 0 <= k < num_classes}
  return np.concatenate([picture, legend(entries, picture.shape[1],
                                         palette(max(num_classes, 1)))], axis=0)


def draw_segments(image: np.ndarray, segment_ids: np.ndarray, names: Mapping[int, str],
                  alpha: float = 0.6, min_side: int = MIN_SIDE) -> np.ndarray:
  """The image beside its segments (e.g. panoptic: one id per object or stuff region, 0 or an
  id missing from `names` = no segment), each segment blended in its id's colour, and a legend
  of `names` (id -> text such as 'circle 2')."""
  rgb = to_rgb(image)
  factor = enlargement(rgb.shape, min_side)
  segment_ids = np.asarray(segment_ids).astype(np.int64)
  named = np.isin(segment_ids, list(names))
  colours = palette(max(max(names, default=0), int(segment_ids.max(initial=0))) + 1)
  blended = overlay(rgb, colours[np.where(named, segment_ids, 0)], alpha, named)
  picture = side_by_side([enlarge(rgb, factor), enlarge(blended, factor)], ['image', 'segments'])
  return np.concatenate([picture, legend(names, picture.shape[1], colours)], axis=0)
