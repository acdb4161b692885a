"""The data path: batches in particle order, the last small batch merged, and memory that stays bounded for stacks larger than RAM."""

import mrcfile
import numpy as np
import pytest

from cryodomain.io.metadata import read_particles
from cryodomain.workflows.data import ParticleBatches, batch_bounds, batch_loader
from cryodomain.workflows.distributed import Processes


def anonymous_rss_mb() -> float:
    """Resident anonymous memory of this process (file-backed mmap pages are reclaimable cache)."""
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


def test_iterating_a_stack_much_larger_than_the_batches_keeps_memory_bounded(tmp_path, tiny_simulation):
    # A 400 MB stack: 1600 images of 256 x 256, written in chunks so the test itself stays small.
    n, box = 1600, 256
    path = tmp_path / "big.mrcs"
    with mrcfile.new_mmap(path, shape=(n, box, box), mrc_mode=2) as mrc:
        for start in range(0, n, 100):
            mrc.data[start : start + 100] = np.float32(start)
    table = read_particles(tiny_simulation["star"])
    big = table.subset(np.arange(n) % len(table))
    big.image_paths = np.full(n, str(path))
    big.image_indices = np.arange(n)
    big.image_size = np.full(n, box)
    dataset = ParticleBatches(big)
    before = anonymous_rss_mb()
    peak = before
    seen = 0
    for batch in batch_loader(dataset, 64, shuffle=True, seed=0, epoch=0):
        seen += len(batch["index"])
        # Each image holds the number of the chunk it was written in.
        assert np.all(batch["images"][:, 0, 0].numpy() == (batch["index"].numpy() // 100) * 100)
        peak = max(peak, anonymous_rss_mb())
    assert seen == n
    # One batch is 16 MB; the stack is 400 MB. Allow a few batches of working memory.
    assert peak - before < 120, (before, peak)


def test_sequential_batches_come_in_particle_order(tiny_simulation):
    dataset = ParticleBatches(read_particles(tiny_simulation["star"]))
    order = np.concatenate([batch["index"].numpy() for batch in batch_loader(dataset, 10, shuffle=False)])
    assert order.tolist() == list(range(48))
    shuffled = [np.concatenate([b["index"].numpy() for b in batch_loader(dataset, 10, shuffle=True, seed=3, epoch=e)]) for e in (0, 0, 1)]
    assert shuffled[0].tolist() == shuffled[1].tolist() != shuffled[2].tolist()
    assert sorted(shuffled[2].tolist()) == list(range(48))


def sizes(bounds) -> list[int]:
    return np.diff(bounds).tolist()


def test_a_last_batch_under_half_a_batch_joins_the_one_before():
    # 5000 images in batches of 128: 38 full ones and 136 at the end, not 39 and a batch of 8.
    assert sizes(batch_bounds(5000, 128)) == [128] * 38 + [136]
    assert sizes(batch_bounds(44, 10)) == [10, 10, 10, 14]
    # Half a batch or more stays a batch of its own; so do exact multiples and a single batch.
    assert sizes(batch_bounds(45, 10)) == [10, 10, 10, 10, 5]
    assert sizes(batch_bounds(48, 16)) == [16, 16, 16]
    assert sizes(batch_bounds(3, 10)) == [3]
    assert sizes(batch_bounds(14, 10)) == [14]
    for n, batch_size in ((5000, 128), (44, 10), (1, 1), (97, 32)):
        bounds = batch_bounds(n, batch_size)
        assert bounds[0] == 0 and bounds[-1] == n


def test_the_loader_serves_the_merged_batches_resumed_and_sharded_alike(tiny_simulation):
    dataset = ParticleBatches(read_particles(tiny_simulation["star"]))  # 48 particles: 20 + 28
    epoch = [batch["index"].tolist() for batch in batch_loader(dataset, 20, shuffle=True, seed=1, epoch=2)]
    assert [len(batch) for batch in epoch] == [20, 28]
    assert sorted(sum(epoch, [])) == list(range(48))  # every image once
    # start_batch counts the merged batches: resuming at the second gets the same 28 images.
    resumed = [batch["index"].tolist() for batch in batch_loader(dataset, 20, shuffle=True, seed=1, epoch=2, start_batch=1)]
    assert resumed == epoch[1:]
    # Each of two DDP processes reads its contiguous half of the same global batches.
    shares = [[batch["index"].tolist() for batch in batch_loader(dataset, 20, shuffle=True, seed=1, epoch=2, processes=Processes(rank, 2))] for rank in (0, 1)]
    assert [[len(batch) for batch in share] for share in shares] == [[10, 14], [10, 14]]
    assert [first + second for first, second in zip(*shares)] == epoch


def fourier_rms(images: np.ndarray) -> float:
    """Root mean square of the orthonormal 2-D Fourier coefficients of a stack, by numpy."""
    return float(np.sqrt(np.mean(np.abs(np.fft.fft2(images.astype(np.float64), norm="ortho")) ** 2)))


def test_the_dataset_scale_is_the_fourier_std_of_a_sample_for_any_dataset_size(tiny_simulation):
    """docs/method.md: images are divided by one dataset-wide factor, the std of the Fourier
    coefficients of a sample of particles (data.normalization_sample), robust for any size."""
    import torch

    from cryodomain.physics.imaging import ImageFrame
    from cryodomain.workflows.data import Preprocessor, dataset_scale

    table = read_particles(tiny_simulation["star"])
    dataset = ParticleBatches(table)
    images = dataset[list(range(48))]["images"].numpy()
    # A sample at least as large as the dataset: the whole stack.
    scale = dataset_scale(dataset, 1000, seed=0)
    assert scale == pytest.approx(fourier_rms(images), rel=1e-6)
    # A smaller sample: the same statistic of that many particles, not of the whole stack.
    sampled = [dataset_scale(dataset, 4, seed=seed) for seed in range(5)]
    assert len(set(sampled)) > 1 and all(0.5 * scale < value < 2 * scale for value in sampled)
    # One factor for the dataset: brighter images, a proportionally larger scale.
    brighter = ParticleBatches(table)
    brighter.images.read = lambda rows, read=brighter.images.read: 3.0 * read(rows)
    assert dataset_scale(brighter, 1000, seed=0) == pytest.approx(3 * scale, rel=1e-6)
    # One particle, or a handful (the published code failed under 100), gives a finite positive scale.
    for n in (1, 3):
        small = dataset_scale(ParticleBatches(table.subset(np.arange(n))), 1000, seed=0)
        assert np.isfinite(small) and small == pytest.approx(fourier_rms(images[:n]), rel=1e-6)
    # Divided by it, the images have unit mean square: what the loss and the encoder see.
    frame = ImageFrame.build(32, 4.0)
    encoder_input, _ = Preprocessor(frame, scale, 1.0)(torch.from_numpy(images), torch.zeros(48, 2))
    assert float(encoder_input.double().square().mean()) == pytest.approx(1.0, rel=1e-5)


def test_training_divides_the_images_by_the_scale_of_its_dataset(tmp_path, tiny_simulation, tiny_config_overrides):
    import torch

    from cryodomain.examples import STATE_A
    from cryodomain.workflows.config import load_config
    from cryodomain.workflows.data import dataset_scale
    from cryodomain.workflows.train import train
    from cryodomain.workflows.trained_run import TrainedRun

    config = load_config(None, {**tiny_config_overrides, "optim.epochs": 1, "data.normalization_sample": 20})
    train(tiny_simulation["star"], STATE_A, tmp_path / "run", config, progress=False)
    expected = dataset_scale(ParticleBatches(read_particles(tiny_simulation["star"])), 20, seed=config.optim.seed)
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=False)["scale"] == expected
    assert TrainedRun.load(tmp_path / "run").context.preprocess.scale == expected
