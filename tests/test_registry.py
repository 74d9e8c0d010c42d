import pytest

from vlamergebench.registry import Registry, Spec


def test_register_make_and_unknown_name():
    registry = Registry("widget")
    registry.register("ordered", "collections:OrderedDict", kwargs={"a": 1}, paper="none")
    assert registry.names() == ["ordered"]
    assert registry.spec("ordered").metadata["paper"] == "none"
    made = registry.make("ordered", b=2)
    assert dict(made) == {"a": 1, "b": 2}
    with pytest.raises(KeyError, match="unknown widget 'nope'; registered: ordered"):
        registry.spec("nope")
    with pytest.raises(ValueError, match="already registered"):
        registry.register("ordered", "collections:OrderedDict")


def test_bad_entry_point_and_missing_attribute():
    with pytest.raises(ValueError, match="package.module:attr"):
        Spec("x", "collections.OrderedDict")
    registry = Registry("widget")
    registry.register("ghost", "collections:NoSuchThing")
    with pytest.raises(ImportError, match="no attribute 'NoSuchThing'"):
        registry.load("ghost")


def test_spec_is_immutable():
    spec = Spec("x", "a:b", kwargs={"k": 1})
    with pytest.raises(TypeError):
        spec.kwargs["k"] = 2
