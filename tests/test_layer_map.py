"""The uniform mapping (12 -> 4 gives 3/6/9/12 plus embeddings 0 -> 0), rounding, explicit lists, errors."""

import pytest

from pipeline.distill.layer_map import LayerMap, build_layer_map, teacher_layer_for
from pipeline.errors import ConfigError


def test_twelve_to_four_maps_to_layers_3_6_9_12_and_embeddings():
    layer_map = build_layer_map(12, 4)
    assert layer_map.pairs == ((1, 3), (2, 6), (3, 9), (4, 12))
    assert layer_map.embeddings
    assert layer_map.describe() == "emb 0->0, 1->3, 2->6, 3->9, 4->12"


def test_six_to_three():
    assert build_layer_map(6, 3).pairs == ((1, 2), (2, 4), (3, 6))


def test_twelve_to_five_rounds_half_up():
    # 12/5 * m = 2.4, 4.8, 7.2, 9.6, 12
    assert [t for _, t in build_layer_map(12, 5).pairs] == [2, 5, 7, 10, 12]
    assert teacher_layer_for(1, 2, 4) == 1  # 0.5 rounds up, and never below layer 1


def test_explicit_teacher_layers_allow_many_to_one():
    layer_map = build_layer_map(12, 4, teacher_layers=[12, 12, 12, 12])
    assert layer_map.pairs == ((1, 12), (2, 12), (3, 12), (4, 12))
    assert layer_map.teacher_layers == [12]


def test_explicit_pairs_allow_partial_and_one_to_many_maps():
    layer_map = build_layer_map(12, 4, pairs=[(4, 11), (4, 12)], embeddings=False)
    assert layer_map.pairs == ((4, 11), (4, 12))
    assert layer_map.student_layers == [4]
    assert not layer_map.embeddings


def test_teacher_layer_out_of_range_names_the_depth():
    with pytest.raises(ConfigError, match="teacher layer 13 is out of range: the teacher has 12 layers"):
        build_layer_map(12, 4, teacher_layers=[3, 6, 9, 13])


def test_student_layer_out_of_range_names_the_depth():
    with pytest.raises(ConfigError, match="student layer 5 is out of range: the student has 4 layers"):
        build_layer_map(12, 4, pairs=[(5, 12)])


def test_teacher_layers_list_must_cover_every_student_layer():
    with pytest.raises(ConfigError, match="has 3 entries but the student has 4 layers"):
        build_layer_map(12, 4, teacher_layers=[4, 8, 12])


def test_teacher_layers_and_pairs_are_exclusive():
    with pytest.raises(ConfigError, match="either teacher_layers or pairs"):
        build_layer_map(12, 4, teacher_layers=[3, 6, 9, 12], pairs=[(1, 3)])


def test_empty_mapping_is_refused():
    with pytest.raises(ConfigError, match="maps no layer"):
        LayerMap((), embeddings=False).validate(12, 4)
