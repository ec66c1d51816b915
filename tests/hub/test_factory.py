"""Class 6, the factory: an unknown tag is a ValueError listing the arch's tags; num_classes, in_chans and pretrained
are checked through both front doors (attnzoo.create_model and timm.create_model)."""

import re

import numpy as np
import pytest
import timm
import torch

import attnzoo


@pytest.mark.parametrize("create", [attnzoo.create_model, timm.create_model], ids=["attnzoo", "timm"])
def test_unknown_tag_lists_the_tags(create):
    with pytest.raises(ValueError, match=r"unknown tag 'nope' for 'ela_resnet18'; its tags are: untrained, fmnist"):
        create("ela_resnet18.nope")


def test_unknown_tag_of_a_non_timm_model():
    with pytest.raises(ValueError, match=r"unknown tag 'nope' for 'mkunet_t'; its tags are: untrained, fmnist_seg"):
        attnzoo.create_model("mkunet_t.nope")
    assert type(attnzoo.create_model("mkunet_t.untrained")).__name__ == "MKUNet"


def test_known_tags_build_including_a_user_hub_tag(hub_dir, published):
    assert attnzoo.create_model("ela_resnet18.untrained").num_classes == 1000
    assert attnzoo.create_model("ela_resnet18.fmnist").num_classes == 10  # the tag's cfg, untrained weights
    # a tag published after import is known without pretrained=True too (timm had no cfg for it)
    assert attnzoo.create_model("aztest_tinynet.unit").pretrained_cfg["tag"] == "unit"


BAD_ARGUMENTS = [
    (dict(num_classes="ten"), TypeError, "num_classes must be an int >= 0 (0 builds the model without a classifier "
                                         "head, as in timm), got 'ten' (str)"),
    (dict(num_classes=-1), ValueError, "num_classes must be an int >= 0"),
    (dict(num_classes=2.0), TypeError, "got 2.0 (float)"),
    (dict(num_classes=True), TypeError, "got True (bool)"),
    (dict(in_chans=0), ValueError, "in_chans must be an int >= 1 (the number of input channels), got 0"),
    (dict(in_chans="rgb"), TypeError, "in_chans must be an int >= 1"),
    (dict(pretrained="yes"), TypeError, "pretrained must be True or False, got 'yes' (str)"),
]


@pytest.mark.parametrize("create", [attnzoo.create_model, timm.create_model], ids=["attnzoo", "timm"])
@pytest.mark.parametrize("kwargs, error, message", BAD_ARGUMENTS, ids=[str(b[0]) for b in BAD_ARGUMENTS])
def test_bad_counts_are_refused(create, kwargs, error, message):
    with pytest.raises(error, match=r"aztest_tinynet: .*" + re.escape(message)):
        create("aztest_tinynet", **kwargs)


def test_zero_classes_means_no_head_and_numpy_ints_are_ints():
    headless = attnzoo.create_model("aztest_tinynet", num_classes=0)
    assert isinstance(headless.fc, torch.nn.Identity) and headless(torch.randn(2, 1, 8, 8)).shape == (2, 8)
    model = attnzoo.create_model("aztest_tinynet", num_classes=np.int64(3), in_chans=np.int32(2))
    assert model(torch.randn(1, 2, 8, 8)).shape == (1, 3)
    with pytest.raises(TypeError, match="aztest_tinygnn: num_classes must be an int"):
        attnzoo.create_model("aztest_tinygnn", num_classes="x")
