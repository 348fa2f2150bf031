"""The Fashion-MNIST ViT in NumPy: config checks, shipped weights, float forward vs the JAX model
it was trained as (reference logits stored at training time), accuracy, MAC counts."""
import numpy as np
import pytest

from vitaccel.golden import fmnist
from vitaccel.golden import vit as V


def shipped():
    return [v for v in V.VARIANTS if (V.WEIGHTS_DIR / f"{v}.npz").is_file()]


def test_config_validation():
    with pytest.raises(ValueError, match="multiple of patch"):
        V.ViTConfig(patch=5)
    with pytest.raises(ValueError, match="multiple of heads"):
        V.ViTConfig(heads=3)
    with pytest.raises(ValueError, match="selector_blocks"):
        V.ViTConfig(selector_blocks=(0, 2, 3))
    with pytest.raises(ValueError, match="keep_ratios"):
        V.ViTConfig(keep_ratios=(0.5, 1.5, 0.5))
    with pytest.raises(ValueError, match="topk"):
        V.ViTConfig(topk=51)
    cfg = V.ViTConfig()
    assert (cfg.tokens, cfg.head_dim, cfg.patches) == (50, 32, 49)
    assert V.ViTConfig.from_dict(cfg.to_dict()) == cfg


def test_every_variant_is_shipped():
    assert shipped() == list(V.VARIANTS)


@pytest.mark.parametrize("variant", V.VARIANTS)
def test_numpy_forward_matches_the_trained_jax_model(variant):
    cfg, params, meta = V.load_params(variant)
    ref = np.asarray(meta["reference_logits"])
    images, _ = fmnist.load_subset()
    mode, sel = V.MODES[variant]
    got = V.forward_float(cfg, params, images[:len(ref)], mode, sel)
    # JAX trained in float32; the NumPy forward is float64
    assert np.abs(got - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())


def test_float_model_accuracy():
    cfg, params, meta = V.load_params("float")
    # The target: >= 90 % top-1 on the 10,000 test images, as measured by the training
    # run that wrote the file (90.68 %: 25 epochs, then a second cosine cycle of 12); the
    # NumPy forward on the shipped 1,000-image subset (90.8 %) checks the weights as shipped.
    assert meta["test_top1_jax"] >= 0.90
    images, labels = fmnist.load_subset()
    top1 = (V.forward_float(cfg, params, images).argmax(1) == labels).mean()
    assert top1 >= 0.90


def test_bad_weights_and_images(tmp_path):
    cfg, params, meta = V.load_params("float")
    broken = dict(params)
    broken["blocks.2.fc1.w"] = broken["blocks.2.fc1.w"][:, :100]
    with pytest.raises(ValueError, match=r"blocks.2.fc1.w has shape \(64, 100\)"):
        V.save_params(tmp_path / "x.npz", cfg, broken, "float")
    del broken["blocks.2.fc1.w"]
    with pytest.raises(ValueError, match="no tensor 'blocks.2.fc1.w'"):
        V.check_params(cfg, broken)
    with pytest.raises(ValueError, match="does not exist"):
        V.load_params("float", tmp_path / "missing.npz")
    np.savez(tmp_path / "plain.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="not a vitaccel ViT weight file"):
        V.load_params("float", tmp_path / "plain.npz")
    with pytest.raises(ValueError, match="unknown variant"):
        V.load_params("resnet")
    with pytest.raises(ValueError, match="uint8"):
        V.forward_float(cfg, params, np.zeros((1, 28, 28), np.float32))
    with pytest.raises(ValueError, match="shape"):
        V.images_to_input(np.zeros((28, 28), np.uint8))


def test_macs_per_image():
    cfg = V.ViTConfig()
    m = V.macs_per_image(cfg)
    # 6 blocks x 50 tokens x (64x192 + 64x64 + 2x64x128) + attention 6 x 2 heads x 2 x 50^2 x 32
    assert m["linear"] == 6 * 50 * 32768 + 49 * 16 * 64 + 64 * 10
    assert m["attention"] == 6 * 2 * 2 * 50 * 50 * 32
    half = V.macs_per_image(cfg, [50, 25, 25, 25, 25, 25])
    assert half["total"] < m["total"]
    assert V.macs_per_image(cfg, attention="softmax", kept_fraction=0.1)["attention"] == \
        m["attention"] // 10
