import pytest
import torch

from supersub.errors import SupersubError
from supersub.taxonomy import Taxonomy


def make() -> Taxonomy:
    return Taxonomy(("bird", "dog"), ("robin", "crow", "pug"), (0, 0, 1))


def test_indices_and_membership():
    t = make()
    assert (t.novel_super, t.novel_sub) == (2, 3)
    assert t.subs_of(0) == [0, 1] and t.subs_of(1) == [2]
    m = t.membership()
    assert m.tolist() == [[1, 0], [1, 0], [0, 1]]
    mn = t.membership(with_novel=True)
    assert mn.shape == (4, 3) and mn[3, 2] == 1 and mn.sum() == 4


def test_round_trip_and_subset():
    t = make()
    assert Taxonomy.from_dict(t.to_dict()) == t
    sub, remap = t.subset([0, 2])
    assert sub.sub_names == ("robin", "pug") and sub.sub_to_super == (0, 1) and remap == {0: 0, 2: 1}


def test_subclass_under_two_superclasses_is_an_error():
    with pytest.raises(SupersubError, match="subclass 1 .*two superclasses"):
        Taxonomy.from_pairs(["bird", "dog"], ["robin", "crow"], [(0, 0), (0, 1), (1, 1)], source="train.csv")


def test_subclass_without_images_is_an_error():
    with pytest.raises(SupersubError, match=r"\('crow'\) has no labelled image"):
        Taxonomy.from_pairs(["bird"], ["robin", "crow"], [(0, 0)])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(super_names=(), sub_names=(), sub_to_super=()), "no superclasses"),
        (dict(super_names=("a",), sub_names=("x", "y"), sub_to_super=(0,)), "2 subclasses but 1"),
        (dict(super_names=("a",), sub_names=("x",), sub_to_super=(3,)), "maps to superclass 3"),
        (dict(super_names=("a", "a"), sub_names=("x",), sub_to_super=(0,)), "appears twice"),
        (dict(super_names=("a", "novel"), sub_names=("x",), sub_to_super=(0,)), "'novel' must be the last"),
    ],
)
def test_invalid_taxonomies(kwargs, match):
    with pytest.raises(SupersubError, match=match):
        Taxonomy(**kwargs)


def test_from_dict_missing_key():
    with pytest.raises(SupersubError, match="missing key 'sub_to_super'"):
        Taxonomy.from_dict({"super_names": ["a"], "sub_names": ["x"]}, "t.json")
    assert isinstance(make().membership(), torch.Tensor)
