import numpy as np

from cryodomain.io.metadata import read_particles
from cryodomain.io.stack import ParticleImages
from cryodomain.workflows.convert import convert_particles


def test_conversion_keeps_images_and_metadata_in_particle_order(tmp_path, tiny_simulation):
    original = read_particles(tiny_simulation["star"])
    # A subset in a shuffled order, so the new stack's order is the table's, not the old file's.
    order = np.random.default_rng(0).permutation(len(original))[:30]
    subset_star = tmp_path / "subset.star"
    from cryodomain.io.star import write_star

    write_star(subset_star, original.subset(order))
    for dtype, tolerance in (("float32", 0.0), ("float16", 1e-2)):
        stack, star = convert_particles(subset_star, tmp_path / dtype, dtype=dtype, chunk=7, progress=False)
        converted = read_particles(star)
        assert len(converted) == 30 and set(converted.image_paths) == {str(stack.resolve())}
        np.testing.assert_allclose(converted.rotations, original.rotations[order])
        np.testing.assert_allclose(converted.defocus_u_A, original.defocus_u_A[order])
        new = ParticleImages(converted.image_paths, converted.image_indices).read(np.arange(30))
        old = ParticleImages(original.image_paths, original.image_indices).read(order)
        scale = np.abs(old).max()
        assert np.abs(new - old).max() <= tolerance * scale
