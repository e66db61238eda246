"""A judge for the tiny example study (examples/study-tiny.yaml): the share of a completion's
characters that are lowercase letters. Meaningless as taste, but it varies between the random
outputs of tiny models, so the study's statistics have something to work on. Real studies use
vader, hf:PATH or a judge of your own."""


def letters(prompt, completion: str) -> float:
    return sum(c.islower() for c in completion) / max(1, len(completion))
