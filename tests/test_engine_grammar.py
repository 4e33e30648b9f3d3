"""Grammar-constrained decoding in the engine: every output of an untrained model validates against its
schema; a constrained row in a batch does not change its neighbours and equals its solo run; speculative
decoding under a grammar gives plain constrained greedy's text, token for token."""

import json

import jsonschema
import pytest
import torch

from llmkit.config import ModelConfig
from llmkit.errors import GenerationError
from llmkit.infer import Engine, SamplingParams, Speculator, layer_skip_draft
from llmkit.infer.grammar import GrammarCompiler, GrammarError
from llmkit.model import Transformer

pytestmark = pytest.mark.usefixtures("one_thread")

PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age", "tags"],
          "properties": {"name": {"type": "string", "maxLength": 10},
                         "age": {"type": "integer", "minimum": 0, "maximum": 120},
                         "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "minItems": 1, "maxItems": 3}}}
POINT = {"type": "object", "additionalProperties": False, "required": ["x", "y"],
         "properties": {"x": {"type": "integer", "minimum": -50, "maximum": 50}, "y": {"type": "boolean"}}}


@pytest.fixture(scope="module")
def model():
    """Random weights drawn wide (std 0.3), so the unconstrained text wanders over the whole vocabulary:
    only the grammar can make it JSON."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("tiny", max_seq_len=512)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model


@pytest.fixture(scope="module")
def compiler(model, shakespeare_tokenizer):
    return GrammarCompiler(shakespeare_tokenizer, model.config.vocab_size, shakespeare_tokenizer.stop_token_ids)


@pytest.fixture
def engine(model, shakespeare_tokenizer):
    return Engine(model, stop_token_ids=shakespeare_tokenizer.stop_token_ids, tokenizer=shakespeare_tokenizer)


def prompts(tok, n):
    return [tok.encode(f"Request {i}: the answer, as JSON, is", add_bos=True) for i in range(n)]


def decoded(tok, completion):
    ids = [t for t in completion.token_ids if t not in tok.stop_token_ids]
    return json.loads(tok.decode(ids))


@pytest.mark.parametrize("schema", [PERSON, POINT], ids=["person", "point"])
def test_constrained_outputs_validate_greedy_and_sampled(engine, compiler, shakespeare_tokenizer, schema):
    tok = shakespeare_tokenizer
    grammar = compiler.json_schema(schema)
    for i, prompt in enumerate(prompts(tok, 4)):
        for temperature in (0, 1.0):
            c = engine.complete(prompt, SamplingParams(max_new_tokens=150, temperature=temperature, seed=i,
                                                       top_k=50 if temperature else 0, grammar=grammar))
            assert c.finish_reason == "stop", tok.decode(c.token_ids)
            jsonschema.validate(decoded(tok, c), schema)
    plain = engine.complete(prompts(tok, 1)[0], SamplingParams(max_new_tokens=40, temperature=0))
    with pytest.raises(json.JSONDecodeError):  # without the grammar the same model writes no JSON
        json.loads(tok.decode(plain.token_ids))


def test_finished_grammar_ends_the_request_without_a_stop_token(engine, compiler, shakespeare_tokenizer):
    """The JSON closes: nothing may follow, so the request stops at once ("stop", no extra forward)."""
    grammar = compiler.json_schema({"enum": ["yes", "no"]})
    c = engine.complete(prompts(shakespeare_tokenizer, 1)[0], SamplingParams(max_new_tokens=50, temperature=0,
                                                                             grammar=grammar))
    assert c.finish_reason == "stop" and shakespeare_tokenizer.decode(c.token_ids) in ('"yes"', '"no"')


def test_batched_constrained_and_unconstrained_equal_their_solo_runs(engine, compiler, shakespeare_tokenizer):
    grammars = [compiler.json_schema(PERSON), None, compiler.json_schema(POINT), None, compiler.json_object(), None]
    params = [SamplingParams(max_new_tokens=60, temperature=0 if i % 3 else 0.8, seed=i, grammar=g)
              for i, g in enumerate(grammars)]
    batch = prompts(shakespeare_tokenizer, len(params))
    together = engine.generate_batch(batch, params)
    alone = [engine.complete(p, sp) for p, sp in zip(batch, params)]
    assert [c.token_ids for c in together] == [c.token_ids for c in alone]
    for c, schema in zip(together[:3:2], (PERSON, POINT)):
        jsonschema.validate(decoded(shakespeare_tokenizer, c), schema)


def test_logprobs_stay_the_models_own(engine, compiler, shakespeare_tokenizer):
    """OpenAI reports the model's distribution: the grammar picks the token, not its log-probability."""
    prompt = prompts(shakespeare_tokenizer, 1)[0]
    c = engine.complete(prompt, SamplingParams(max_new_tokens=5, temperature=0, logprobs=3,
                                               grammar=compiler.json_schema(PERSON)))
    with torch.no_grad():
        logits = engine.model(torch.tensor([prompt]))[0, -1].float()
    assert c.token_ids[0] == shakespeare_tokenizer.encode("{")[0]
    assert c.logprobs[0].logprob == pytest.approx(float(torch.log_softmax(logits, -1)[c.token_ids[0]]), abs=1e-4)
    assert [t for t, _ in c.logprobs[0].top] == torch.topk(logits, 3).indices.tolist()


@pytest.mark.parametrize("drafter", ["self", "layer-skip", "prompt-lookup"])
def test_speculative_constrained_greedy_equals_plain_constrained(model, engine, compiler, shakespeare_tokenizer,
                                                                 drafter):
    tok = shakespeare_tokenizer
    draft = {"self": model, "layer-skip": layer_skip_draft(model, 1), "prompt-lookup": "prompt-lookup"}[drafter]
    speculative = Engine(model, stop_token_ids=tok.stop_token_ids, tokenizer=tok,
                         speculator=Speculator(draft, draft_tokens=4))
    grammar = compiler.json_schema(PERSON)
    for prompt in prompts(tok, 3):
        params = SamplingParams(max_new_tokens=80, temperature=0, grammar=grammar)
        plain = engine.complete(prompt, params)
        fast = speculative.complete(prompt, params)
        assert fast.token_ids == plain.token_ids and fast.finish_reason == plain.finish_reason == "stop"
        jsonschema.validate(decoded(tok, fast), PERSON)
        sampled = speculative.complete(prompt, SamplingParams(max_new_tokens=120, temperature=1.0, seed=7, top_k=50,
                                                              grammar=grammar))
        jsonschema.validate(decoded(tok, sampled), PERSON)
    assert speculative.speculator.drafted > 0
    if drafter == "self":  # the draft samples under the same grammar as the target: every draft is accepted
        assert speculative.speculator.acceptance_rate == 1.0


def test_speculative_rolls_the_grammar_back_after_rejected_drafts(model, compiler, shakespeare_tokenizer):
    """Prompt lookup drafts text copied from a prompt full of JSON-breaking tokens: the rejected drafts were
    walked through the grammar and must leave no trace (the output still validates and equals plain)."""
    tok = shakespeare_tokenizer
    prompt = tok.encode('{"name":"ab"} }}}} ]]] {"name":"ab"} {"age":', add_bos=True)
    grammar = compiler.json_schema(PERSON)
    params = SamplingParams(max_new_tokens=80, temperature=0, grammar=grammar)
    speculative = Engine(model, stop_token_ids=tok.stop_token_ids, tokenizer=tok,
                         speculator=Speculator("prompt-lookup", draft_tokens=6))
    fast = speculative.complete(prompt, params)
    plain = Engine(model, stop_token_ids=tok.stop_token_ids, tokenizer=tok).complete(prompt, params)
    assert fast.token_ids == plain.token_ids
    jsonschema.validate(decoded(tok, fast), PERSON)
    assert speculative.speculator.accepted < speculative.speculator.drafted  # some drafts were rejected


@pytest.mark.parametrize("schema, message", [({"type": "foo"}, "foo"), ({"type": "string", "pattern": "(("}, "regex"),
                                             ({"$ref": "#/nowhere"}, "nowhere")])
def test_invalid_schema_is_a_clear_error(compiler, schema, message):
    with pytest.raises(GrammarError, match=message):
        compiler.json_schema(schema)


def test_grammar_must_be_compiled(compiler):
    with pytest.raises(GenerationError, match="grammar must be"):
        SamplingParams(grammar={"type": "object"})
