"""The demo model's recipe (scripts/train_demo_model.py): the JPEG block-edge filters see block edges and
nothing else, the implant wires them as a fresh tower is wired and hands the language model their contrast;
the chroma grain filter has a path of its own and hands the language model noise, not texture; and the
quality question's manifest thins out the attribute-only images."""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from conftest import EXAMPLE_PHOTOS, ROOT
from realqa.data.manifest import read_manifest
from realqa.data.synth import synthesize
from realqa.preprocessing import GLOBAL_SIDE, fragments_rgb

sys.path.insert(0, str(ROOT / "scripts"))
import train_demo_model as recipe  # noqa: E402

PATCH = 14


def on_off_ratio(image: Image.Image) -> float:
    """Mean |on-grid response| / mean |off-grid response| over the fragment patches of the canvas."""
    luma = np.asarray(fragments_rgb(image).convert("L"), dtype=np.float32)[:, GLOBAL_SIDE:] / 255
    side = luma.shape[0] // PATCH
    patches = luma.reshape(side, PATCH, side, PATCH).transpose(0, 2, 1, 3).reshape(-1, PATCH, PATCH)
    response = np.abs(np.einsum("nij,fij->nf", patches, recipe.block_filters(PATCH))).mean(0)
    bands = len(recipe.BLOCK_BANDS)
    on = np.r_[response[:bands], response[2 * bands:3 * bands]]
    off = np.r_[response[bands:2 * bands], response[3 * bands:]]
    return float(on.sum() / off.sum())


@pytest.fixture(scope="module")
def photo():
    """motorcycle.jpg at 1024 px wide, resampled twice so its own JPEG grid is gone."""
    image = Image.open(next(p for p in EXAMPLE_PHOTOS if p.stem == "motorcycle")).convert("RGB")
    smaller = image.resize((image.width * 3 // 4, image.height * 3 // 4), Image.LANCZOS)
    return smaller.resize((1024, round(1024 * image.height / image.width)), Image.LANCZOS)


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(buffer).convert("RGB")


def noised(image: Image.Image, sigma: float, seed: int = 0) -> Image.Image:
    """White Gaussian noise per pixel and channel (8-bit levels), as the benchmark's noise strengths."""
    noise = np.random.default_rng(seed).normal(0, sigma, (image.height, image.width, 3))
    return Image.fromarray(np.clip(np.asarray(image, dtype=np.float32) + noise, 0, 255).astype(np.uint8))


def test_block_filters_see_jpeg_blocks_more_with_compression_and_not_noise(photo):
    clean = on_off_ratio(photo)
    assert 0.9 < clean < 1.1  # no edges on the 8 px grid: the two filters alike
    ratios = [on_off_ratio(jpeg(photo, quality)) for quality in (50, 20, 5)]
    assert clean < ratios[0] < ratios[1] < ratios[2] and ratios[2] > clean + 0.3, (clean, ratios)
    assert abs(on_off_ratio(noised(photo, 20)) - 1) < 0.1


def scrambled_tower(folder):
    """The vision tower of a fresh base model in ``folder`` with every weight moved (as training moves them),
    and a copy of those weights."""
    from transformers import AutoModelForImageTextToText

    visual = AutoModelForImageTextToText.from_pretrained(recipe.build_base(folder, seed=0)).model.visual
    with torch.no_grad():
        for parameter in visual.parameters():
            parameter.normal_()
    return visual, {name: p.clone() for name, p in visual.named_parameters()}


def test_implanted_filters_are_wired_to_the_language_model_as_a_fresh_tower_wires_its_channels(tmp_path):
    """Implanted into a tower whose every weight has moved (as training moves them), the filters' path is a
    fresh structured_init tower's: rectified by block 0 into spare channels nothing else writes (block 0's
    attention writes nothing into the filters either); the merger then hands the language model one number,
    their on-grid minus off-grid magnitudes, in the first of their dimensions, the rest silent."""
    from transformers import AutoModelForImageTextToText

    implanted, trained = scrambled_tower(tmp_path / "base")
    fresh = AutoModelForImageTextToText.from_pretrained(tmp_path / "base").model.visual
    recipe.implant_block_filters(implanted)
    filters = recipe.block_filters(PATCH)
    sources = list(range(3, 3 + len(filters)))
    units = [s - 1 for s in sources]
    targets = [3 + recipe.DETAIL_CHANNELS + u for u in units]
    rows = [r for u in units for r in (2 * u, 2 * u + 1)]
    dims = [t - recipe.DETAIL_CHANNELS for t in targets]  # the language-model dimensions they reach
    weight = implanted.patch_embed.proj.weight
    for n, channel in enumerate(sources):  # every colour and both frames: luma, the same in each frame
        expected = torch.tensor(filters[n], dtype=weight.dtype) * recipe.BLOCK_FILTER_SCALE / 6
        assert torch.allclose(weight[channel], expected.expand_as(weight[channel]))

    def same(get, index):
        assert torch.equal(get(implanted)[index], get(fresh)[index])

    same(lambda v: v.patch_embed.proj.weight, targets)
    same(lambda v: v.blocks[0].norm2.weight, sources)
    same(lambda v: v.blocks[0].attn.proj.weight, sources)  # the rectifier reads the filters, not what a
    same(lambda v: v.blocks[0].attn.proj.bias, sources)  # trained attention mixes in from other patches
    same(lambda v: v.blocks[0].mlp.fc1.weight, rows)
    same(lambda v: v.blocks[0].mlp.fc1.bias, rows)
    same(lambda v: v.blocks[0].mlp.fc2.weight, (slice(None), rows))
    for block in range(len(fresh.blocks)):
        for layer in ("attn.proj", "mlp.fc2"):
            same(lambda v: v.get_submodule(f"blocks.{block}.{layer}").weight, targets)
            same(lambda v: v.get_submodule(f"blocks.{block}.{layer}").bias, targets)
    same(lambda v: v.merger.ln_q.weight, targets)
    # the merger passes one number: the on-grid magnitudes minus the off-grid ones over its 2 x 2 tokens
    first, last = implanted.merger.mlp[0], implanted.merger.mlp[2]
    contrast = dims[0]
    bands = len(recipe.BLOCK_BANDS)
    signs = torch.tensor(([1.0] * bands + [-1.0] * bands) * 2) * 0.25 * recipe.BLOCK_CONTRAST_GAIN
    expected = torch.zeros_like(first.weight[contrast])
    for token in range(4):
        expected[[token * weight.shape[0] + t for t in targets]] = signs
    assert torch.equal(first.weight[contrast], expected)
    assert not first.weight[dims[1:]].any() and torch.equal(first.bias[dims], torch.full((len(dims),), 4.0))
    into, out_of = torch.zeros(last.weight.shape[0], len(dims)), torch.zeros(len(dims), last.weight.shape[1])
    into[contrast, 0] = out_of[0, contrast] = 1.0
    assert torch.equal(last.weight[:, dims], into) and torch.equal(last.weight[dims], out_of)
    assert torch.equal(last.bias[dims], torch.tensor([-4.0] + [0.0] * (len(dims) - 1)))
    assert implanted.blocks[0].mlp.fc2.weight[targets].abs().sum() > 0  # the magnitudes are written
    # everything else keeps its trained value
    others = [c for c in range(weight.shape[0]) if c not in sources + targets]
    assert torch.equal(weight[others], trained["patch_embed.proj.weight"][others])
    kept_dims = [d for d in range(implanted.merger.mlp[2].out_features) if d not in dims]
    assert torch.equal(implanted.merger.mlp[2].bias[kept_dims], trained["merger.mlp.2.bias"][kept_dims])


def merger_output(visual, processor, canvas: Image.Image) -> tuple[torch.Tensor, int, int]:
    """What the language model reads of a canvas, through the real processor at the recipe's size: one row per
    merged token, and the token grid's rows and columns."""
    inputs = processor(images=[canvas], return_tensors="pt",
                       size={"shortest_edge": recipe.MIN_PIXELS, "longest_edge": recipe.MAX_PIXELS})
    with torch.no_grad():
        tokens = visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"]).pooler_output
    rows, columns = (int(n) // 2 for n in inputs["image_grid_thw"][0, 1:])
    return tokens, rows, columns


def language_model_dimension(visual, processor, image: Image.Image, dim: int) -> float:
    """One dimension of the merger's output, averaged over the fragment tokens of the image's canvas."""
    tokens, rows, columns = merger_output(visual, processor, fragments_rgb(image))
    return float(tokens[:, dim].reshape(rows, columns)[:, columns // 2:].mean())


@pytest.fixture
def bundled_tower():
    """The bundled model's vision tower and processor (a fresh copy per test: tests implant into it)."""
    from transformers import AutoImageProcessor, AutoModelForImageTextToText

    from realqa.models import demo_model_path

    visual = AutoModelForImageTextToText.from_pretrained(demo_model_path()).model.visual.eval()
    return visual, AutoImageProcessor.from_pretrained(demo_model_path())


def test_the_language_model_gets_jpeg_blocking_as_one_number_that_noise_barely_raises(bundled_tower, photo):
    """Implanted into the bundled model's trained tower, through the real processor: the contrast dimension
    of the merger's output, averaged over the fragment tokens, is about 0 on the clean photo, rises with
    each step of JPEG compression, and noise raises it by less than half of what quality 20 does."""
    visual, processor = bundled_tower
    recipe.implant_block_filters(visual)
    contrast = 5  # the first filter's language-model dimension: channel 3's place among those passed on
    clean = language_model_dimension(visual, processor, photo, contrast)
    compressed = [language_model_dimension(visual, processor, jpeg(photo, quality), contrast) for quality in (50, 20, 5)]
    noisy = language_model_dimension(visual, processor, noised(photo, 20), contrast)
    assert abs(clean) < 0.2 and clean + 0.4 < compressed[0] < compressed[1] < compressed[2], (clean, compressed)
    assert noisy - clean < 0.5 * (compressed[1] - clean), (clean, noisy, compressed)


def test_grain_filter_has_a_path_of_its_own_to_one_language_model_dimension(tmp_path):
    """Implanted into a tower whose every weight has moved, the grain filter and its mirror fill the three
    channels structured_init leaves free; block 0 rectifies their difference into the third, nothing else
    writes into or reads from them, and the merger passes the magnitude (less the mean of the filter and its
    mirror) in the block-edge filters' second, silent, language-model dimension; everything else is kept."""
    visual, trained = scrambled_tower(tmp_path / "base")
    recipe.implant_grain_filter(visual)
    width = visual.patch_embed.proj.weight.shape[0]
    plus, minus, magnitude = channels = [width - 3, width - 2, width - 1]
    assert plus == 3 + recipe.DETAIL_CHANNELS + 2 + recipe.DETAIL_CHANNELS  # the first channel structured_init leaves
    units = [2 * (2 + recipe.DETAIL_CHANNELS), 2 * (2 + recipe.DETAIL_CHANNELS) + 1]
    weight = visual.patch_embed.proj.weight
    expected = torch.tensor(recipe.grain_filter(PATCH), dtype=weight.dtype)[:, None] * recipe.GRAIN_FILTER_SCALE / 2
    assert torch.allclose(weight[plus], expected.expand_as(weight[plus])) and torch.equal(weight[minus], -weight[plus])
    assert not weight[magnitude].any()
    assert np.allclose(recipe.grain_filter(PATCH).sum(0), 0)  # no luma: red minus green
    for n, block in enumerate(visual.blocks):
        assert not block.attn.qkv.weight[:, channels].any() and not block.attn.proj.weight[channels].any()
        assert not block.attn.proj.bias[channels].any() and not block.mlp.fc2.bias[channels].any()
        reading = block.mlp.fc1.weight[:, channels].abs().sum(1).nonzero().flatten().tolist()
        writing = block.mlp.fc2.weight[channels].abs().sum(0).nonzero().flatten().tolist()
        assert (reading, writing) == ((units, units) if n == 0 else ([], [])), n
    fc1, fc2 = visual.blocks[0].mlp.fc1, visual.blocks[0].mlp.fc2
    assert torch.equal(fc1.weight[units][:, [plus, minus]], torch.tensor([[1.0, -1.0], [-1.0, 1.0]]))  # gain 2, halved
    assert not fc1.bias[units].any() and not fc1.weight[units][:, :plus].any()
    assert torch.equal(fc2.weight[:, units].nonzero(), torch.tensor([[magnitude, 0], [magnitude, 1]]))
    norm = visual.blocks[0].norm2
    assert torch.equal(norm.weight[channels], torch.ones(3)) and not norm.bias[channels].any()
    first, last = visual.merger.mlp[0], visual.merger.mlp[2]
    dim = 3 + recipe.BLOCK_SOURCES[1] - 1
    read = first.weight.view(first.weight.shape[0], 4, width)[:, :, channels]
    assert read[[d for d in range(first.weight.shape[0]) if d != dim]].abs().sum() == 0
    share = 0.25 * recipe.GRAIN_GAIN
    assert torch.equal(read[dim], torch.tensor([[-share / 2, -share / 2, share]] * 4))
    assert first.weight[dim].count_nonzero() == 12 and first.bias[dim] == 4.0
    assert torch.equal(last.weight[:, dim].nonzero().flatten(), torch.tensor([dim])) and last.weight[dim, dim] == 1.0
    assert last.weight[dim].count_nonzero() == 1 and last.bias[dim] == -4.0
    others = [c for c in range(width) if c not in channels]
    assert torch.equal(weight[others], trained["patch_embed.proj.weight"][others])
    kept = [d for d in range(last.out_features) if d != dim]
    assert torch.equal(last.bias[kept], trained["merger.mlp.2.bias"][kept])


def test_the_language_model_gets_noise_not_texture_from_the_grain_filter(bundled_tower, photo):
    """Through the real processor and the bundled tower: the grain dimension rises with noise sigma 10 and 20
    and stays up at 35 (the layer norms divide it by a token scale that noise raises too, so it saturates
    there); JPEG and blur do not raise it; and no clean example photo (fur, a motorcycle's detail, a printed
    portrait) reaches what the mildest noise gives any of them."""
    from realqa.preprocessing import realqa_rgb

    visual, processor = bundled_tower
    recipe.implant_grain_filter(visual)  # as it was trained: the bundled model carries the implant already
    dim = 3 + recipe.BLOCK_SOURCES[1] - 1
    grain = [language_model_dimension(visual, processor, noised(photo, sigma), dim) for sigma in (0, 10, 20, 35)]
    assert grain[0] < 0.2 and grain[0] + 0.5 < grain[1] < grain[2] and grain[3] > grain[1], grain
    for name, other in (("jpeg 20", jpeg(photo, 20)), ("blur 2", photo.filter(ImageFilter.GaussianBlur(2)))):
        assert language_model_dimension(visual, processor, other, dim) < grain[0] + 0.1, name
    examples = [realqa_rgb(Image.open(p)) for p in EXAMPLE_PHOTOS]
    clean = [language_model_dimension(visual, processor, image, dim) for image in examples]
    mild = [language_model_dimension(visual, processor, noised(image, 10), dim) for image in examples]
    assert max(clean) < min(mild), (clean, mild)


def test_exposure_steps_have_a_path_of_their_own_to_ten_language_model_dimensions(tmp_path):
    """Implanted into a tower whose every weight has moved: two detail channels become the patch's mean
    brightness and its mirror, their magnitude channels a constant and its mirror (block 0's attention bias,
    the only write), nothing else reads or writes the four; the merger's next 80 hidden units compare
    brightness with each level for each of its 4 tokens, and nothing but those units feeds dimensions 7-16;
    the replaced channels' dimensions go silent; everything else is kept; implanting twice changes nothing."""
    visual, trained = scrambled_tower(tmp_path / "base")
    recipe.implant_exposure_steps(visual)
    once = {name: p.clone() for name, p in visual.named_parameters()}
    recipe.implant_exposure_steps(visual)
    assert all(torch.equal(once[name], p) for name, p in visual.named_parameters())

    weight = visual.patch_embed.proj.weight
    width = weight.shape[0]
    bright, mirror = sources = list(recipe.EXPOSURE_SOURCES)
    constant, constant_mirror = targets = [3 + recipe.DETAIL_CHANNELS + s - 1 for s in sources]
    channels = [*sources, *targets]
    expected = torch.full_like(weight[bright], recipe.EXPOSURE_SCALE / weight[bright].numel())  # a mean
    assert torch.allclose(weight[bright], expected) and torch.equal(weight[mirror], -weight[bright])
    assert not weight[targets].any()
    for n, block in enumerate(visual.blocks):
        assert not block.attn.qkv.weight[:, channels].any() and not block.mlp.fc1.weight[:, channels].any()
        assert not block.attn.proj.weight[channels].any() and not block.mlp.fc2.weight[channels].any()
        assert not block.mlp.fc2.bias[channels].any()
        bias = block.attn.proj.bias[channels].tolist()
        assert bias == ([0.0, 0.0, recipe.EXPOSURE_SCALE, -recipe.EXPOSURE_SCALE] if n == 0 else [0.0] * 4), n
    first, last = visual.merger.mlp[0], visual.merger.mlp[2]
    read = first.weight.view(first.weight.shape[0], 4, width)[:, :, channels]
    used = 3 + 2 + recipe.DETAIL_CHANNELS
    steps = list(range(used, used + 8 * len(recipe.EXPOSURE_LEVELS)))
    assert read.abs().sum((1, 2)).nonzero().flatten().tolist() == steps
    for unit in steps:  # each step unit reads the four channels of one token, and nothing else
        assert read[unit].abs().sum(1).count_nonzero() == 1 and first.weight[unit].count_nonzero() == 4
    dims = list(range(7, 17))
    assert [last.weight[d].nonzero().flatten().tolist() for d in dims] == [steps[8 * n:8 * n + 8] for n in range(10)]
    assert last.weight[:, steps].abs().sum(1).nonzero().flatten().tolist() == dims
    assert torch.equal(last.bias[dims], torch.full((10,), -recipe.EXPOSURE_GAIN / 2))
    silent = [target - recipe.DETAIL_CHANNELS for target in targets]
    assert not last.weight[silent].any() and not last.weight[:, silent].any() and not last.bias[silent].any()
    others = [c for c in range(width) if c not in channels]
    assert torch.equal(weight[others], trained["patch_embed.proj.weight"][others])
    kept = [d for d in range(last.out_features) if d not in dims + silent]
    assert torch.equal(last.weight[kept][:, [u for u in range(first.out_features) if u not in steps + silent]],
                       trained["merger.mlp.2.weight"][kept][:, [u for u in range(first.out_features)
                                                                   if u not in steps + silent]])


def test_exposure_steps_give_the_share_of_patches_above_each_grey_level(bundled_tower):
    """Through the real processor and the bundled tower: the ten dimensions read back the share of the
    canvas's 14 px patches whose mean grey lies above each level, to within 0.02, for a photo, the photo
    darkened to a quarter and brightened until it clips: the layer norms' division by the token scale, which
    hides a uniform darkening from the rest of the tower, does not hide it from these."""
    from realqa.preprocessing import realqa_rgb

    visual, processor = bundled_tower
    recipe.implant_exposure_steps(visual)
    photo = realqa_rgb(Image.open(next(p for p in EXAMPLE_PHOTOS if p.stem == "astronaut")))
    darker = Image.eval(photo, lambda v: v // 4)
    clipped = Image.eval(photo, lambda v: min(255, v * 3))
    shares = []
    for image in (photo, darker, clipped):
        canvas = fragments_rgb(image)
        tokens, _, _ = merger_output(visual, processor, canvas)
        read = (tokens[:, 7:17].mean(0).numpy() + 1) / 2
        grey = np.asarray(canvas, dtype=np.float32).mean(2) / 255
        rows, columns = grey.shape[0] // PATCH, grey.shape[1] // PATCH
        patches = grey.reshape(rows, PATCH, columns, PATCH).mean((1, 3))
        true = np.array([(patches > level).mean() for level in recipe.EXPOSURE_LEVELS])
        assert np.abs(read - true).max() < 0.02, (read.round(3), true.round(3))
        shares.append(true)
    assert shares[1][3] < shares[0][3] - 0.3 and shares[2][-1] > shares[0][-1] + 0.2  # the three differ


def test_the_bundled_tower_carries_every_implant_as_made(bundled_tower):
    """The bundled model was trained with its tower frozen after each implant: making them all again, in
    their order, changes no weight (a tower trained after an implant, or an implant changed since, would)."""
    visual, _ = bundled_tower
    shipped = {name: p.clone() for name, p in visual.named_parameters()}
    for implant in recipe.IMPLANTS.values():
        implant(visual)
    changed = [name for name, p in visual.named_parameters() if not torch.equal(p, shipped[name])]
    assert not changed, changed


def test_quality_manifest_keeps_a_share_of_the_attribute_only_images(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for n, path in enumerate(EXAMPLE_PHOTOS[:2]):
        Image.open(path).convert("RGB").resize((160, 112)).save(photos / f"p{n}.png")
    _, paths = synthesize(photos, tmp_path / "synth", seed=1, types=["gaussian_blur", "tilt", "saturation_loss"],
                          levels=4, views=2, test_fraction=0.5)
    train = read_manifest(paths["train"])

    def attribute_only(sample):
        return bool(sample.info["distortions"]) and all(d["type"] != "gaussian_blur" for d in sample.info["distortions"])

    kept = read_manifest(recipe.quality_manifest(paths["train"], share=0.25))
    everything_else = [s.id for s in train.samples if not attribute_only(s)]
    assert [s.id for s in kept.samples if not attribute_only(s)] == everything_else
    dropped = [s.id for s in train.samples if attribute_only(s)]
    assert len(dropped) >= 8 and [s.id for s in kept.samples if attribute_only(s)] == dropped[3::4]
    assert read_manifest(paths["train"]).samples == train.samples  # the attribute questions' manifest is untouched


def test_size_changes_name_known_keys_and_build_a_larger_structured_base(tmp_path):
    from transformers import AutoModelForImageTextToText

    size = recipe.architecture(["vision_width=192", "vision_depth=6", "hidden_size=128"])
    assert size == {**recipe.ARCHITECTURE, "vision_width": 192, "vision_depth": 6, "hidden_size": 128}
    assert recipe.ARCHITECTURE["vision_width"] == 96  # the shipped size is left as it is
    with pytest.raises(ValueError, match="--size depth=6: unknown key 'depth'"):
        recipe.architecture(["depth=6"])
    with pytest.raises(ValueError, match="--size layers=two: 'two' is not a positive integer"):
        recipe.architecture(["layers=two"])
    model = AutoModelForImageTextToText.from_pretrained(recipe.build_base(tmp_path / "base", seed=0, architecture=size))
    vision, text = model.config.vision_config, model.config.text_config
    assert (vision.embed_dim, vision.depth, text.hidden_size) == (192, 6, 128)
    # The structured initialisation, as at the shipped size: block 0's MLP writes the colour and detail
    # magnitudes; later blocks start adding nothing.
    assert model.model.visual.blocks[0].mlp.fc2.weight.abs().sum() > 0
    assert all(block.mlp.fc2.weight.abs().sum() == 0 for block in model.model.visual.blocks[1:])


@pytest.mark.parametrize("argv, message", [
    (["--size", "vision_width=192", "--init", "somewhere"], "--size sets a fresh model's size; --init brings its own"),
    (["--size", "width=192"], "unknown key 'width'"),
])
def test_size_is_refused_before_the_synthetic_set_is_made(argv, message, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(sys, "argv", ["train_demo_model.py", "--work", str(tmp_path / "work"), *argv])
    with pytest.raises(SystemExit) as exit_:
        recipe.main()
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "work").exists()
