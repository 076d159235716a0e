"""Questions as every entry point accepts them: a string with something in it, stripped of outer whitespace."""

from __future__ import annotations

from .errors import EmptyQuestionError


def clean_question(question: object) -> str:
    """The question without surrounding whitespace; EmptyQuestionError for a non-string or a blank one."""
    if not isinstance(question, str):
        raise EmptyQuestionError(f"the question must be a string, got {type(question).__name__}")
    if not question.strip():
        raise EmptyQuestionError("the question is empty: ask something about the documents")
    return question.strip()
