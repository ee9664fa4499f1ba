"""One list of corruptions, severities and families: every table keyed by corruption is tied to it."""
from __future__ import annotations

from stl_bench.data import corruptions as kernels
from stl_bench.data.corruptions import names
from stl_bench.evaluate import alexnet, figures, metrics, suites


def test_the_names_module_is_the_one_list():
    assert len(names.ALL_CORRUPTIONS) == 19 and len(set(names.ALL_CORRUPTIONS)) == 19
    assert names.STANDARD_CORRUPTIONS + names.EXTRA_CORRUPTIONS == names.ALL_CORRUPTIONS
    assert names.SEVERITIES == (1, 2, 3, 4, 5)
    assert set(names.FAMILY.values()) == set(names.FAMILIES)
    # every reader uses the very same objects, not copies
    for module in (alexnet, kernels, metrics, figures, suites):
        for attr in ("STANDARD_CORRUPTIONS", "EXTRA_CORRUPTIONS", "ALL_CORRUPTIONS", "SEVERITIES", "CATEGORIES"):
            if hasattr(module, attr):
                assert getattr(module, attr) is getattr(names, attr), (module.__name__, attr)


def test_kernels_are_registered_for_exactly_the_named_corruptions():
    assert tuple(kernels.CORRUPTIONS) == names.ALL_CORRUPTIONS
    assert set(kernels._KERNELS) == set(names.ALL_CORRUPTIONS)
    for name, spec in kernels.CORRUPTIONS.items():
        assert spec.family == names.FAMILY[name]
        assert spec.standard == (name in names.STANDARD_CORRUPTIONS)


def test_alexnet_table_covers_19_corruptions_by_5_severities_and_mce_is_the_15_standard():
    assert tuple(alexnet.ALEXNET_ERROR_BY_SEVERITY) == names.ALL_CORRUPTIONS  # same names, same order
    assert set(alexnet.ALEXNET_MEAN_ERROR) == set(names.ALL_CORRUPTIONS)
    assert all(len(v) == len(names.SEVERITIES) for v in alexnet.ALEXNET_ERROR_BY_SEVERITY.values())
    assert len(names.STANDARD_CORRUPTIONS) == 15
    assert set(names.STANDARD_CORRUPTIONS) == {c for c, spec in kernels.CORRUPTIONS.items() if spec.standard}


def test_category_folders_hold_each_corruption_once():
    listed = [c for group in names.CATEGORIES.values() for c in group]
    assert sorted(listed) == sorted(names.ALL_CORRUPTIONS)
    assert names.CATEGORIES["extra"] == names.EXTRA_CORRUPTIONS
    assert names.GROUPS["standard"] == names.STANDARD_CORRUPTIONS
