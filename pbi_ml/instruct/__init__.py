"""Instructions per pair (the "instructions" stage, docs/method.md#instructions), and the export's removal prompts. Importing
this loads no torch."""

from pbi_ml.instruct.base import INSTRUCT_BACKENDS, InstructConfig, InstructionWriter, make_instruction_writer
from pbi_ml.instruct.check import CheckResult, InstructionChecker, names_object, object_name_problem
from pbi_ml.instruct.grammar import clean_category
from pbi_ml.instruct.refs import load_refs, ref_instruction
from pbi_ml.instruct.templates import TemplateWriter, class_instruction, location_phrase, removal_prompt

__all__ = [
    "INSTRUCT_BACKENDS",
    "CheckResult",
    "InstructConfig",
    "InstructionChecker",
    "InstructionWriter",
    "TemplateWriter",
    "class_instruction",
    "clean_category",
    "load_refs",
    "location_phrase",
    "make_instruction_writer",
    "names_object",
    "object_name_problem",
    "ref_instruction",
    "removal_prompt",
]
