"""vlft demo-data: LLaMA-Factory's mllm_demo format, determinism, and answers
that follow from the pictures (checked on the decoded images with PIL)."""
import filecmp
import json
import os
import re

import numpy as np
from PIL import Image

from vlft_testing import run_vlft, tempdir

COLOURS = {"red": (220, 30, 30), "green": (30, 160, 50), "blue": (40, 70, 220), "yellow": (245, 215, 30),
           "purple": (130, 40, 160), "orange": (245, 130, 20), "white": (255, 255, 255), "black": (0, 0, 0),
           "gray": (128, 128, 128)}
WORDS = {"One": 1, "Two": 2, "Three": 3, "Four": 4, "Five": 5, "Six": 6, "Seven": 7, "Eight": 8}


def nearest_colour(rgb):
    return min(COLOURS, key=lambda name: sum((a - b) ** 2 for a, b in zip(COLOURS[name], rgb)))


def analyse(path):
    """(background name, shape colour name, number of shapes) from the pixels."""
    pixels = np.array(Image.open(path).convert("RGB")).astype(int)
    h, w, _ = pixels.shape
    names = list(COLOURS)
    table = np.array([COLOURS[n] for n in names])
    labels = np.argmin(((pixels[:, :, None, :] - table[None, None]) ** 2).sum(-1), axis=-1)
    counts = np.bincount(labels.ravel(), minlength=len(names))
    background = int(np.argmax(counts))
    counts[background] = 0
    shape = int(np.argmax(counts))
    mask = labels == shape
    # Connected components (4-neighbour) of the shape colour, ignoring specks.
    seen = np.zeros_like(mask)
    blobs = 0
    for y in range(h):
        for x in range(w):
            if mask[y, x] and not seen[y, x]:
                stack, size = [(y, x)], 0
                seen[y, x] = True
                while stack:
                    cy, cx = stack.pop()
                    size += 1
                    for ny, nx in ((cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)):
                        if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                            seen[ny, nx] = True
                            stack.append((ny, nx))
                if size >= 20:
                    blobs += 1
    return names[background], names[shape], blobs


def test_demo_data_format_and_determinism():
    a, b, c = tempdir(), tempdir(), tempdir()
    run_vlft("demo-data", a, "--n", 40, "--seed", 9)
    run_vlft("demo-data", b, "--n", 40, "--seed", 9)
    run_vlft("demo-data", c, "--n", 40, "--seed", 10)
    for name in ("mllm_demo.json", "dataset_info.json"):
        assert filecmp.cmp(os.path.join(a, name), os.path.join(b, name), shallow=False)
    images = sorted(os.listdir(os.path.join(a, "images")))
    assert images == sorted(os.listdir(os.path.join(b, "images")))
    for name in images:
        assert filecmp.cmp(os.path.join(a, "images", name), os.path.join(b, "images", name), shallow=False)
    assert open(os.path.join(a, "mllm_demo.json")).read() != open(os.path.join(c, "mllm_demo.json")).read()

    info = json.load(open(os.path.join(a, "dataset_info.json")))
    assert info == {"mllm_demo": {"file_name": "mllm_demo.json", "formatting": "sharegpt",
                                  "columns": {"messages": "messages", "images": "images"},
                                  "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                                           "assistant_tag": "assistant"}}}
    samples = json.load(open(os.path.join(a, "mllm_demo.json")))
    assert len(samples) == 40
    two_image = multi_turn = jpeg = png = 0
    sizes = set()
    for sample in samples:
        assert set(sample) == {"messages", "images"}
        messages = sample["messages"]
        assert len(messages) in (4, 6)
        multi_turn += len(messages) >= 4
        for k, message in enumerate(messages):
            assert set(message) == {"content", "role"}
            assert message["role"] == ("user" if k % 2 == 0 else "assistant")
        marks = sum(m["content"].count("<image>") for m in messages)
        assert marks == len(sample["images"]) and messages[0]["content"].startswith("<image>" * marks)
        two_image += len(sample["images"]) == 2
        for rel in sample["images"]:
            path = os.path.join(a, rel)
            with Image.open(path) as im:
                assert im.format in ("JPEG", "PNG") and im.mode == "RGB"
                sizes.add(im.size)
                assert 96 <= im.width <= 200 and 96 <= im.height <= 200
                jpeg += im.format == "JPEG"
                png += im.format == "PNG"
    assert two_image >= 4 and jpeg > png > 0 and len(sizes) > 20


def test_demo_answers_follow_from_pictures():
    folder = tempdir()
    run_vlft("demo-data", folder, "--n", 60, "--seed", 4)
    samples = json.load(open(os.path.join(folder, "mllm_demo.json")))
    checked = 0
    for sample in samples:
        facts = [analyse(os.path.join(folder, rel)) for rel in sample["images"]]
        msgs = sample["messages"]
        for question, answer in zip(msgs[0::2], msgs[1::2]):
            q, a = question["content"].replace("<image>", ""), answer["content"]
            if q == "What colour is the background?":
                assert a == facts[0][0].capitalize() + ".", (q, a, facts)
            elif q.startswith("What colour is the ") or q.startswith("What colour are the "):
                assert a == facts[0][1].capitalize() + ".", (q, a, facts)
            elif re.fullmatch(r"How many \w+ are there\?", q):
                assert WORDS[a[:-1]] == facts[0][2], (q, a, facts)
            elif q.startswith("How many") and "first picture" in q:
                assert WORDS[a[:-1]] == facts[0][2], (q, a, facts)
            elif q.startswith("How many") and "second picture" in q:
                assert WORDS[a[:-1]] == facts[1][2], (q, a, facts)
            elif q.startswith("How many") and "both pictures" in q:
                assert WORDS[a[:-1]] == facts[0][2] + facts[1][2], (q, a, facts)
            elif q.startswith("Which picture has more"):
                assert a == ("The first one." if facts[0][2] > facts[1][2] else "The second one."), (q, a, facts)
            elif q == "What shape is in the picture?":
                assert a.split()[1] == facts[0][1] and facts[0][2] == 1, (q, a, facts)
            else:
                continue
            checked += 1
    assert checked >= 60, checked


def test_demo_data_bad_usage():
    assert run_vlft("demo-data", check=False).returncode == 2
    assert run_vlft("demo-data", tempdir(), "--n", "0", check=False).returncode == 2
    assert run_vlft("demo-data", tempdir(), "--seed", "x", check=False).returncode == 2
    blocker = os.path.join(tempdir(), "file")
    open(blocker, "w").close()
    result = run_vlft("demo-data", os.path.join(blocker, "sub"), "--n", "2", check=False)
    assert result.returncode == 1 and blocker in result.stderr
