import pytest

from backend.errors import UserError
from backend.train.sample_prompts import SamplePrompt, load_sample_prompts, parse_prompt_line


def test_options_and_negative_rest_of_line():
    p = parse_prompt_line("a red ball --w 32 --h 48 --f 9 --s 4 --d 7 --g 3.5 --n blurry, dark --ugly")
    assert p == SamplePrompt("a red ball", 32, 48, 9, 4, 7, 3.5, "blurry, dark --ugly")


def test_defaults_and_comments(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("# comment\n\nloraidA a red ball\nloraidB a blue cube --f 1\n")
    prompts = load_sample_prompts(f)
    assert [p.prompt for p in prompts] == ["loraidA a red ball", "loraidB a blue cube"]
    assert prompts[1].frames == 1 and prompts[0].frames == 5


@pytest.mark.parametrize("line, message", [
    ("x --f 8", "--f 8 is not 4n\\+1; use 5"),
    ("x --w 30", "multiples of 16"),
    ("x --s many", "--s expects a number"),
    ("--w 32", "prompt text is empty"),
])
def test_bad_lines(line, message):
    with pytest.raises(UserError, match=message):
        parse_prompt_line(line)
