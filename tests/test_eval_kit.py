"""The evaluation tests' own kit: colour codes survive the pipeline, the lookup model is not trivially right."""
from __future__ import annotations

import torch
from PIL import Image

from eval_kit import DATA_CONFIG, LookupModel, id_color, logits_table


def test_colour_code_survives_preprocessing_and_jpeg(tmp_path):
    from stl_bench.evaluate.preprocess import Preprocessing

    prep = Preprocessing.from_data_config(DATA_CONFIG)
    codes = [0, 7, 123, 999, 458]
    table = torch.eye(1000)
    model = LookupModel(table)
    for code in codes:
        img = Image.new("RGB", (31, 17), id_color(code))
        jpeg = tmp_path / f"{code}.jpg"
        img.save(jpeg, quality=85)
        for source in (img, Image.open(jpeg)):
            x = prep.to_model_input(prep.folder_transform()(source)[None])
            assert int(model(x).argmax()) == code


def test_lookup_model_is_not_trivially_right():
    table = logits_table(1000, {5: {9: 1.0}})
    x = torch.full((1, 3, 4, 4), 12.0).add(25.0 * torch.tensor([0, 0, 5]).view(1, 3, 1, 1))
    x = (x / 255.0 - 0.5) / 0.25
    assert int(LookupModel(table)(x).argmax()) == 9
