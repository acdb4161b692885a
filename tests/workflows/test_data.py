"""The data path: batches in particle order, and memory that stays bounded for stacks larger than RAM."""

import mrcfile
import numpy as np

from cryodomain.io.metadata import read_particles
from cryodomain.workflows.data import ParticleBatches, batch_loader


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
