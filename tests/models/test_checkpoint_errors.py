"""Bad weight files and model options give a CheckpointError / ArgumentError that names the
problem and the fix, for every family (test-tiny, SatCLIP image and location, SkySense)."""

from __future__ import annotations

import json

import pytest
import torch

from xsky.exceptions import ArgumentError, CheckpointError, UnsafeCheckpointError
from xsky.models import create_model, load_checkpoint, model_options
from xsky.models.satclip import LocationEncoder

HTML = "<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head><body>Not Found</body>"


@pytest.fixture
def files(tmp_path):
    """Bad files every loader is tried with: name -> path."""
    out = {}
    out["html"] = tmp_path / "page.pt"
    out["html"].write_text(HTML)
    out["json"] = tmp_path / "weights.ckpt"
    out["json"].write_text('{"error": "rate limited"}')
    out["empty"] = tmp_path / "empty.pth"
    out["empty"].write_bytes(b"")
    out["garbage"] = tmp_path / "garbage.pt"
    out["garbage"].write_bytes(b"\x80\x04garbage that is no pickle")
    out["tensor"] = tmp_path / "tensor.pt"
    torch.save(torch.ones(3, 4), out["tensor"])
    out["dir"] = tmp_path / "folder"
    out["dir"].mkdir()
    torch.save(create_model("test-tiny").state_dict(), out["dir"] / "w.pt")
    return out


def _no_trust_advice(err):
    assert "trust=True" not in str(err.value)


# ---- the shared loader ----------------------------------------------------------------------


@pytest.mark.parametrize("trust", [False, True])
def test_an_html_page_saved_as_pt_is_named_as_such(files, trust):
    with pytest.raises(CheckpointError, match=r"is an HTML page .*failed download.*"
                                              r"Download the weights again") as err:
        load_checkpoint(files["html"], trust=trust)
    assert not isinstance(err.value, UnsafeCheckpointError)
    assert "<!DOCTYPE html>" in str(err.value)
    _no_trust_advice(err)


@pytest.mark.parametrize(("kind", "match"), [
    ("json", r"is a JSON file, not a torch.save / safetensors checkpoint.*Download"),
    ("empty", r"is empty; the download or copy did not finish. Download it again"),
    ("garbage", r"neither a torch.save nor a safetensors checkpoint.*Download it again"),
    ("dir", r"is a directory \(it holds w.pt\).*pass the path of the file itself"),
])
@pytest.mark.parametrize("trust", [False, True])
def test_files_that_are_no_checkpoint_give_checkpoint_errors(files, kind, match, trust):
    with pytest.raises(CheckpointError, match=match) as err:
        load_checkpoint(files[kind], trust=trust)
    assert not isinstance(err.value, UnsafeCheckpointError)
    _no_trust_advice(err)


def test_a_real_pickle_with_custom_globals_is_the_only_case_advised_trust(tmp_path):
    import pickle

    path = tmp_path / "plain.pkl"
    with open(path, "wb") as f:
        pickle.dump({"w": [1.0, 2.0]}, f)  # a well-formed pickle torch cannot read safely
    with pytest.raises(UnsafeCheckpointError, match="pass trust=True"):
        load_checkpoint(path)


# ---- test-tiny ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["html", "json", "empty", "garbage", "dir"])
def test_test_tiny_refuses_files_that_are_no_checkpoint(files, kind):
    with pytest.raises(CheckpointError, match=str(files[kind].name)) as err:
        create_model("test-tiny", files[kind])
    _no_trust_advice(err)


def test_test_tiny_bare_tensor_says_to_save_a_state_dict(files):
    with pytest.raises(CheckpointError, match=r"tensor.pt.*single tensor of shape \(3, 4\), not "
                                              r"a state dict.*torch.save\(model.state_dict"):
        create_model("test-tiny", files["tensor"])


@pytest.mark.parametrize("layout", ["state_dict", "state_dict+model.", "model", "module."])
def test_lightning_style_files_are_unwrapped(tmp_path, layout):
    src = create_model("test-tiny", feature_dim=8)
    with torch.no_grad():
        for p in src.parameters():
            p.add_(0.5)
    sd = src.state_dict()
    obj = {
        "state_dict": {"state_dict": sd, "epoch": 3},
        "state_dict+model.": {"state_dict": {f"model.{k}": v for k, v in sd.items()},
                              "hyper_parameters": {"lr": 1e-3}},
        "model": {"model": sd, "optimizer": {"lr": 0.1}},
        "module.": {f"module.{k}": v for k, v in sd.items()},
    }[layout]
    path = tmp_path / "lightning.ckpt"
    torch.save(obj, path)
    got = create_model("test-tiny", path, feature_dim=8)
    x = torch.randn(1, 4, 16, 16)
    torch.testing.assert_close(got(x), src(x), rtol=0, atol=0)


def test_ambiguous_nested_state_dicts_are_refused(tmp_path):
    sd = create_model("test-tiny").state_dict()
    path = tmp_path / "two.pt"
    torch.save({"state_dict": sd, "model": sd}, path)
    with pytest.raises(CheckpointError, match=r"several nested state dicts \('state_dict', "
                                              r"'model'\).*torch.save\(model.state_dict"):
        create_model("test-tiny", path)


def test_wrong_shapes_name_the_keys_and_the_option_to_change(tmp_path):
    path = tmp_path / "f8.pt"
    torch.save(create_model("test-tiny", feature_dim=8).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"mix.weight: file \(8, 32, 3, 3\) vs model "
                                              r"\(16, 32, 3, 3\).*feature_dim") as err:
        create_model("test-tiny", path)
    _no_trust_advice(err)


def test_missing_and_unexpected_keys_are_named(tmp_path):
    sd = dict(create_model("test-tiny").state_dict())
    del sd["stem.weight"]
    sd["head.weight"] = torch.zeros(2)
    path = tmp_path / "partial.pt"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"missing 1 required weight\(s\): stem.weight; 1 "
                                              r"unexpected key\(s\): head.weight.*test-tiny "
                                              r"state dict") as err:
        create_model("test-tiny", path)
    _no_trust_advice(err)


def test_unknown_model_options_list_the_valid_ones():
    assert model_options("test-tiny") == ("feature_dim", "stride", "trust", "window")
    with pytest.raises(ArgumentError, match=r"'test-tiny' has no option\(s\) 'foo'; valid "
                                            r"options: 'feature_dim', 'stride', 'trust', "
                                            r"'window'"):
        create_model("test-tiny", foo=1)
    with pytest.raises(ArgumentError, match=r"'satclip-resnet18-l10' has no option\(s\) "
                                            r"'strid'; valid options: .*'stride'"):
        create_model("satclip-resnet18-l10", strid=128)
    with pytest.raises(ArgumentError, match=r"no option\(s\) 'windw'.*'hyperparameters'"):
        create_model("skysense-tiny", windw=8)


def test_factories_forwarding_kwargs_give_argument_errors_too():
    from xsky.models import register_model
    from xsky.models._tiny import TinyNet, tiny_spec

    def factory(weights=None, **kw):
        return TinyNet(tiny_spec(**kw))

    from xsky.models._registry import _REGISTRY

    register_model("forwarding-example", factory, overwrite=True)
    try:
        with pytest.raises(ArgumentError,
                           match=r"'forwarding-example' has no option\(s\) 'colour'"):
            create_model("forwarding-example", colour=1)
    finally:
        _REGISTRY.pop("forwarding-example")


# ---- SatCLIP image and location loaders -----------------------------------------------------


@pytest.mark.parametrize("kind", ["html", "json", "garbage", "dir"])
@pytest.mark.parametrize("loader", ["image", "location"])
def test_satclip_loaders_refuse_files_that_are_no_checkpoint(files, kind, loader):
    def load():
        if loader == "image":
            return create_model("satclip-resnet18-l10", files[kind], trust=True)
        return LocationEncoder.from_checkpoint(files[kind], trust=True)

    with pytest.raises(CheckpointError, match=str(files[kind].name)) as err:
        load()
    _no_trust_advice(err)


def test_satclip_image_bare_tensor_names_the_official_layout(files):
    with pytest.raises(CheckpointError, match=r"single tensor of shape \(3, 4\), not a state "
                                              r"dict; pass the official SatCLIP Lightning"):
        create_model("satclip-resnet18-l10", files["tensor"])


def test_satclip_location_bare_tensor_and_wrong_hyperparameter_types(files, tmp_path):
    with pytest.raises(CheckpointError, match="holds a Tensor, not a dict; expected a SatCLIP"):
        LocationEncoder.from_checkpoint(files["tensor"])
    enc = LocationEncoder(10, 16, 8)
    sd = {f"model.nnet.{k}": v for k, v in enc.nnet.state_dict().items()}
    path = tmp_path / "loc.ckpt"
    torch.save({"state_dict": sd, "hyper_parameters": {"legendre_polys": "ten"}}, path)
    with pytest.raises(CheckpointError, match=r"hyper_parameters\['legendre_polys'\] = 'ten' is "
                                              r"not an integer.*official SatCLIP checkpoint"):
        LocationEncoder.from_checkpoint(path)


# ---- SkySense -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["html", "garbage", "tensor"])
def test_skysense_refuses_files_that_are_no_checkpoint(files, kind):
    with pytest.raises(CheckpointError, match=str(files[kind].name)) as err:
        create_model("skysense-tiny", files[kind], window=8, modalities=("s2",))
    _no_trust_advice(err)


def test_skysense_hyperparameters_file_with_broken_json(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"hyperparameters": {"swin": ')
    with pytest.raises(CheckpointError, match=r"config.json' is not valid JSON.*pass the "
                                              r"official config.json"):
        create_model("skysense-tiny", hyperparameters=path)
    with pytest.raises(CheckpointError, match=r"config.json' is not valid JSON.*pass the "
                                              r"official config.json"):
        create_model("skysense-tiny", hyperparameters=str(path))


def test_skysense_broken_config_json_beside_the_weights(tmp_path):
    (tmp_path / "config.json").write_text("{oops")
    torch.save({}, tmp_path / "w.pth")
    with pytest.raises(CheckpointError, match=r"beside the weights.*not valid JSON.*pass "
                                              r"hyperparameters= explicitly"):
        create_model("skysense-tiny", tmp_path / "w.pth", hyperparameters="beside")


def test_skysense_hyperparameters_path_that_does_not_exist(tmp_path):
    with pytest.raises(ArgumentError, match=r"neither a SkySense preset .*'skysense-tiny'.* nor "
                                            r"an existing JSON file"):
        create_model("skysense-tiny", hyperparameters=str(tmp_path / "nope.json"))


@pytest.mark.parametrize(("section", "key", "value"), [
    ("vit_s2", "embed_dims", "wide"),
    ("fusion", "num_layers", "two"),
    ("swin", "norm_cfg", "LN"),
    (None, "up_scale", [4]),
])
def test_skysense_hyperparameters_of_the_wrong_type(tmp_path, section, key, value):
    from xsky.models.skysense import SKYSENSE_PRESETS

    hp = json.loads(json.dumps(SKYSENSE_PRESETS["skysense-tiny"]))
    (hp.setdefault(section, {}) if section else hp)[key] = value
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"hyperparameters": hp}))
    with pytest.raises(ArgumentError, match=r"SkySense hyperparameters: a value has the wrong "
                                            r"type.*official config.json"):
        create_model("skysense-tiny", hyperparameters=path)
