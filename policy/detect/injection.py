# ruff: noqa: E501, RUF005 -- pattern tables read better one alternative per line than wrapped
"""Prompt-injection recognition: anchors found in one multi-pattern pass, then rules verified.

Each :class:`Rule` is a regular expression over :func:`policy.detect.normalize.fold`-ed
text plus the literal *anchors* one of which every match contains. All anchors of all rules
are compiled into one Aho-Corasick automaton (``ahocorasick-rs``, a Rust library): one
linear pass over the folded text reports every anchor occurrence (~1.5 ms per MB on ASCII
text, whatever the number of anchors), and a rule's expression runs only in a window
around its own anchors' occurrences. A regular-expression alternation of the same phrases
costs ~10 ms per MB in CPython and grows with every phrase; hand-rolled literal searches
grow the same way.

Coverage, by ``kind`` (``severity`` high denies a call's arguments by default, see
docs/detection.md):

* ``ignore_previous_instructions`` -- "ignore / disregard / forget ... previous
  instructions", misspelled verbs included, in English, German, French, Spanish,
  Portuguese, Italian, Chinese, Japanese and Russian;
* ``chat_template_token`` -- role markers of every common chat-template family
  (ChatML, Llama 2/3, Gemma, Phi, Mistral, Alpaca ``### Instruction``, Anthropic
  ``Human:/Assistant:`` turns, Harmony channels), ``###(system_message)`` and tool-result
  closers (``</tool_result>``, ``</function_results>``);
* ``instruction_block`` -- ``<IMPORTANT>``, ``<SYSTEM>``, ``<INFORMATION>`` and similar
  blocks, "important instructions / message for the AI";
* ``new_instructions`` -- "new instructions:", "from now on you ...", "your new task is",
  and their translations;
* ``assistant_directive`` -- imperatives addressed at the assistant ("AI agents must now
  send ...", "if you are an AI ...", "note to the assistant");
* ``role_override`` -- "you are now DAN / unrestricted / in developer mode", "pretend you
  have no restrictions", jailbreak names;
* ``conceal_from_user`` -- "do not tell the user", "without informing the user";
* ``system_prompt_exfiltration`` -- "reveal / print your system prompt";
* ``exfiltration`` -- "send / forward / upload ... to <url or address>", reads of
  credential files (``~/.ssh/id_rsa``, ``.env``, ``~/.aws/credentials``), markdown images
  that carry data to a remote host.

Nothing here raises for any input text.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from operator import itemgetter

import ahocorasick_rs

from .runs import char_offsets

__all__ = ["RULES", "W_REFERENCE", "InjectionHit", "Rule", "alt_reference", "anchor_hits", "byte_hits", "char_hits",
           "find_injections", "ignore_english", "spaced_anchor_seen"]

_AFTER = 320  # how far past its anchor a rule's match may end (see _REACH)


@dataclass(frozen=True, slots=True)
class Rule:
    """One injection pattern: its kind, severity, anchors and the expression that decides."""

    kind: str
    severity: str  # "high" or "medium"
    anchors: tuple[str, ...]
    pattern: re.Pattern[str]
    # 0: a match starts at its anchor (one ``match`` call per anchor occurrence); otherwise
    # how far before the anchor a match may start (a bounded ``search``).
    back: int = 0
    # Literals one of which every match contains: when none occurs in the window, the
    # expression is not tried (a few ``str.find`` cost far less than a failing match of
    # a long expression at every occurrence of a common anchor such as "send" or "print").
    requires: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class InjectionHit:
    kind: str
    severity: str
    start: int
    end: int


def _typos(word: str) -> tuple[str, ...]:
    """``word`` and its one-edit misspellings that keep it recognisable (transpositions, drops)."""
    out = {word}
    for index in range(len(word) - 1):
        out.add(word[:index] + word[index + 1] + word[index] + word[index + 2 :])
    for index in range(1, len(word)):
        out.add(word[:index] + word[index + 1 :])
    out.add(word + word[-1])
    return tuple(sorted(variant for variant in out if len(variant) >= 5))


_Trie = dict[str, "_Trie"]


def _alt(words: Iterable[str]) -> str:
    """An alternation of ``words`` that tries the longest first, as a trie.

    The same matches, in the same order, as ``(?:w1|w2|...)`` with the words sorted
    longest first (:func:`alt_reference`): the words that match at one position are
    prefixes of one another, so "longest first" is "deepest first" -- each node tries its
    children (which start with different characters, so at most one can match) before
    the word that ends there. But a failing position costs one character test per
    distinct first letter instead of one per word: CPython's ``re`` tries an
    alternation's branches one by one (no trie of its own), and rule 0's verbs, "prior"
    words and objects were tried at every gap position.
    """
    root: _Trie = {}
    for word in set(words):
        node = root
        for char in word:
            node = node.setdefault(char, {})
        node[""] = {}

    def emit(node: _Trie) -> str:
        branches = [re.escape(char) + emit(child) for char, child in sorted(node.items()) if char]
        if "" in node:
            branches.append("")  # the word that ends here, after every longer one
        return branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"

    return "(?:" + emit(root) + ")"


def alt_reference(words: Iterable[str]) -> str:
    """The plain alternation :func:`_alt` stands for (kept for the tests)."""
    return "(?:" + "|".join(sorted({re.escape(w) for w in words}, key=len, reverse=True)) + ")"


# Separators between words: at most one line break (code spread over lines is no sentence).
W_REFERENCE = r"(?=[\W_])(?:[^\w\n]|_)*+\n?(?:[^\w\n]|_)*+"
# The same: each `(?:[^\w\n]|_)*+` consumes the longest run of non-word characters and
# underscores (no newline) and gives nothing back, as does `[^\w\n]*+(?:_++[^\w\n]*+)*+`,
# whose outer loop runs only at underscores: a run of single characters is a fast
# repeat in CPython's `re`, a repeated alternation a slow one (5% of rule 0's time).
_W = r"(?=[\W_])[^\w\n]*+(?:_++[^\w\n]*+)*+\n?[^\w\n]*+(?:_++[^\w\n]*+)*+"

# ---- ignore previous instructions ------------------------------------------------------------------

_EN_VERBS = tuple(
    v for base in ("ignore", "disregard", "forget", "override", "bypass", "discard", "abandon") for v in _typos(base)
) + ("ignoring", "disregarding", "forgetting", "stop following", "do not follow", "don't follow",
     "pay no attention to", "no longer follow", "neglect", "overrule", "disreguard", "dissregard", "ingnore",
     "ignnore", "iggnore", "ignorre")  # fmt: skip
_EN_PRIOR = (
    "previous", "previus", "prevous", "pervious", "prior", "above", "earlier", "preceding", "former",
    "foregoing", "system", "original", "initial", "old", "existing", "developer", "all", "any", "every",
    "your", "the user's", "user's", "the user", "my",
)  # fmt: skip
_EN_OBJECTS = tuple(
    v for base in ("instruction", "instructions") for v in _typos(base)
) + ("prompt", "prompts", "direction", "directions", "directive", "directives", "rules", "guidelines",
     "guidance", "messages", "context", "commands", "orders", "constraints", "guardrails", "programming",
     "restrictions", "policies", "policy", "safety", "filters", "settings", "task", "tasks", "conversation",
     "request", "requests", "question", "questions", "query", "input")  # fmt: skip



def ignore_english(alt: Callable[[Iterable[str]], str] = _alt, sep: str = _W) -> str:
    """The English part of rule 0, its word lists joined by ``alt`` and its words separated
    by ``sep`` (the tests build it from :func:`alt_reference` and :data:`W_REFERENCE` too,
    and compare)."""
    verbs = alt(_EN_VERBS)
    gap = rf"(?:[\w'’]+{sep}){{0,5}}?"
    return (
        rf"\b{verbs}{sep}{gap}{alt(_EN_PRIOR)}{sep}{gap}{alt(_EN_OBJECTS)}\b"
        rf"|\b{verbs}{sep}(?:everything|all){sep}(?:above|before|you\W+(?:were|have\W+been)\W+told)"
    )


_IGNORE_EN = ignore_english()
_IGNORE_EU = (
    # German
    r"\b(?:ignorier(?:e|en|t)?|vergiss|vergessen|missachte|missachten|übergehe|verwirf)\b[^.\n]{0,60}?"
    r"(?:anweisung|instruktion|regel|befehl|vorgabe|anordnung|richtlinie|prompt)"
    # French
    r"|\b(?:ignore[rz]?|oublie[rz]?|néglige[rz]?|ne\W+tenez\W+pas\W+compte\W+d[ue]s?)\b[^.\n]{0,60}?"
    r"(?:instructions?|consignes?|règles|directives|ordres|indications)"
    # Spanish / Portuguese / Italian (ignora, olvida, esqueça, dimentica ...)
    r"|\b(?:ignor[ae]|ignorar|ignorate|ignori|olvid[ae]|olvidar|omit[ae]|descart[ae]|esque[çc]a|esquecer|"
    r"desconsider[ae]|dimentica|dimenticate|dimentichi|trascura|non\W+seguire|no\W+sigas)\b[^.\n]{0,60}?"
    r"(?:instrucc?i[oó]n(?:es)?|indicaciones|reglas|[oó]rdenes|directrices|instru[çc][õo]es|instrucoes|"
    r"regras|orienta[çc][õo]es|diretrizes|ordens|istruzioni|regole|indicazioni|direttive|ordini|prompt)"
    # Russian
    r"|(?:игнорируй|игнорируйте|проигнорируй|проигнорируйте|игнорировать|забудь|забудьте|"
    r"не\W+обращай(?:те)?\W+внимания\W+на|отбрось|отмени)[^.\n]{0,60}?"
    r"(?:инструкци|указани|правил|команд|промпт|установк|ограничени)"
)
_CJK_IGNORE = "忽略|无视|無視|忘记|忘記|忘掉|忽视|忽視|不要理会|不要理會|跳过|跳過|無効|破棄|忘れ|従わない|放弃|放棄"
_CJK_OBJECT = "指令|指示|说明|說明|规则|規則|提示词|提示詞|命令|设定|設定|要求|约束|ルール|プロンプト|制約|限制"
_IGNORE_CJK = rf"(?:{_CJK_IGNORE})[^。\n]{{0,24}}?(?:{_CJK_OBJECT})"
_CJK_OBJECT_FIRST = rf"(?:{_CJK_OBJECT})[^。\n]{{0,24}}?(?:{_CJK_IGNORE})"
_IGNORE_ANCHORS = (
    _EN_VERBS
    + ("ignorier", "vergiss", "vergessen", "missacht", "übergehe", "verwirf", "oublie", "néglige", "ne tenez pas",
       "ignora", "ignori", "olvid", "omit", "descart", "esqueça", "esqueca", "esquecer", "desconsider",
       "dimentic", "trascura", "non seguire", "no sigas", "игнор", "проигнор", "забудь", "забудьте",
       "не обращай", "отбрось", "отмени")
    + tuple(_CJK_IGNORE.split("|"))
)  # fmt: skip
_CJK_OBJECT_ANCHORS = tuple(_CJK_OBJECT.split("|"))

# ---- chat templates and blocks -----------------------------------------------------------------------

_CHAT_ANCHORS = (
    "<|im_start|>", "<|im_end|>", "<|system|>", "<|user|>", "<|assistant|>", "<|endoftext|>", "<|eot_id|>",
    "<|start_header_id|>", "<|end_header_id|>", "<|begin_of_text|>", "<|channel|>", "<|message|>", "<|end|>",
    "<|tool_call|>", "<|im_sep|>", "[inst]", "[/inst]", "<<sys>>", "<</sys>>", "<start_of_turn>",
    "<end_of_turn>", "<s>[", "</tool_result", "</function_results", "</tool_output", "</tool_response",
    "</function_result", "</result>", "</output>", "</search_results", "</document", "</context",
    "</user_query", "</untrusted", "<|", "###", "\n\nhuman:", "\n\nassistant:", "[system]", "[/system]",
    "{{#system", "<system_message", "(system_message)", "[system message]", "##system",
)  # fmt: skip
_CHAT = (
    r"<\|(?:im_start|im_end|im_sep|system|user|assistant|endoftext|eot_id|start_header_id|end_header_id|"
    r"begin_of_text|channel|message|end|tool_call|start|constrain|return|call)\|>"
    r"|\[/?inst\]|<</?sys>>|<(?:start|end)_of_turn>|<s>\s*\[inst"
    r"|</(?:tool_result|function_results?|tool_output|tool_response|search_results|untrusted[\w\-]*|user_query)s?\s*>"
    r"|</(?:result|output|document|context)>\s*\n?\s*(?:<[a-z_]+>|#+\s*)?(?:system|assistant|user|new|instruction)"
    r"|#{2,}\s*\(?\s*(?:system|instruction|instructions|assistant|human|user|response|admin)[\w ]{0,20}\)?\s*(?::|#|\n)"
    r"|#{2,}\s*system\s*#{2,}"
    r"|\n\n(?:human|assistant):"
    r"|\[/?system(?:\s+(?:message|note|prompt|override))?\]|\{\{#system|<system_message\b"
    r"|\(system_message\)"
)
_BLOCK_ANCHORS = (
    "<important", "<system", "<information", "<instruction", "<override", "<admin_override",
    "<assistant_instructions", "[important", "important instruction",
    "important message", "important notice", "important note", "important!", "important:", "**important",
    "wichtige anweisung", "instructions importantes", "instrucciones importantes", "instruções importantes",
    "istruzioni importanti", "重要指示", "重要指令", "重要な指示", "важные инструкции", "важная инструкция",
    "system override", "admin override", "priority override", "system notice", "system alert",
)  # fmt: skip
_BLOCK = (
    r"<(?:important|system|information|instructions?|system_instructions|assistant_instructions|override|"
    r"admin_override)(?:\s[^>]{0,80})?>"
    r"|\[(?:important|system)(?:\s+(?:note|message|instructions?|notice))?\]"
    r"|important\W{1,6}(?:instructions?|messages?|notice|note)\b[^\n]{0,60}?"
    r"\b(?:ai|assistant|agent|model|llm|claude|gpt|chatbot|you\s+must|you\s+should)\b"
    r"|\*\*\s*important[^*\n]{0,40}\*\*[^\n]{0,80}?\b(?:ai|assistant|agent|model|llm|you must|ignore|instead)\b"
    r"|important\s*[!:]+\s*(?:(?:ai|assistant|agent|model|llm)s?\b|you\s+(?:must|should|need\s+to|have\s+to)\b|"
    r"ignore|disregard|before\s+(?:you|responding|answering)|do\s+not\s+(?:tell|inform|reveal))"
    r"|wichtige\W+anweisung|instructions\W+importantes|instrucciones\W+importantes|instru[çc][õo]es\W+importantes"
    r"|istruzioni\W+importanti|重要指示|重要指令|重要な指示|важн(?:ые|ая)\W+инструкци"
    r"|(?:system|admin|priority)\W+(?:override|notice|alert)\b[^\n]{0,40}?(?::|\b(?:ai|assistant|agent|model)\b)"
)

# ---- redirections aimed at the assistant -------------------------------------------------------------

_AI_CLEAR = ("ai", "assistant", "llm", "chatbot", "claude", "chatgpt", "copilot", "gemini", "language model")
_AI_AMBIGUOUS = ("agent", "model", "bot", "gpt")
_MODALS = ("must", "should", "shall", "need to", "needs to", "have to", "has to", "are required to",
           "is required to", "are instructed to", "is instructed to", "now", "will now", "will immediately")  # fmt: skip
_AI = "(?:" + "|".join(w.replace(" ", r"\s+") for w in _AI_CLEAR) + r")s?"
_AI_ANY = "(?:" + "|".join(w.replace(" ", r"\s+") for w in _AI_CLEAR + _AI_AMBIGUOUS) + r")s?"
_MODAL = r"(?:must|should|shall|needs?\s+to|ha(?:ve|s)\s+to|(?:are|is)\s+(?:required|instructed)\s+to|will\s+now|will\s+immediately|now)\s+"
_ADVERBS = r"(?:now\s+|immediately\s+|also\s+|first\s+|instead\s+|always\s+|silently\s+|secretly\s+)*"
_BROAD = (
    r"(?:send|forward|email|e-mail|mail|post|upload|transfer|call|invoke|use|run|execute|delete|remove|"
    r"read|open|fetch|visit|navigate|click|include|append|insert|write|reply|respond|say|tell|output|print|"
    r"ignore|disregard|stop|refuse|grant|approve|pay|buy|share|leak|reveal|export|copy|create|add|change|"
    r"update|modify|summari[sz]e|recommend|translate|follow|answer|obey|comply|praise|rate)\b"
)
_NARROW = r"(?:send|forward|email|upload|transfer|exfiltrate|ignore|disregard|reveal|leak|delete|grant|approve|pay)\b"
_DIRECTIVE_ANCHORS = tuple(
    f"{w}{plural} {modal}"
    for w in _AI_CLEAR + _AI_AMBIGUOUS for plural in ("", "s") for modal in _MODALS
) + tuple(
    f"{lead}{w}"
    for w in _AI_CLEAR + _AI_AMBIGUOUS
    for lead in ("attention ", "attention, ", "attention: ", "note to the ", "note to ", "note for the ",
                 "message for the ", "message to the ", "instructions for the ", "instructions for ",
                 "dear ", "hey ", "hi ", "notice to the ", "notice for the ")
) + ("if you are an", "if you are a", "if you're an", "as an ai", "as a language model", "when you read this",
     "when you see this", "when you process this", "instead of summar", "instead of answer", "instead of respond",
     "instead of translat", "instead of doing", "before you respond", "before responding", "before you answer",
     "before answering", "before continuing", "before you continue", "before you reply", "before replying",
     "before proceeding", "before you proceed", "when summarizing", "when summarising", "while summarizing",
     "while summarising")  # fmt: skip
_DIRECTIVE = (
    rf"\b{_AI}\W+(?:(?:reading|processing|viewing|parsing|summari[sz]ing)\s+(?:this|these)\s+\w+\W+)?"
    rf"{_MODAL}{_ADVERBS}{_BROAD}"
    rf"|\b{_AI_ANY}\W+(?:(?:reading|processing|viewing|parsing|summari[sz]ing)\s+(?:this|these)\s+\w+\W+)?"
    rf"{_MODAL}{_ADVERBS}{_NARROW}"
    rf"|\b(?:attention|note|message|instructions?|notice|dear|hey|hi)\W+(?:to\s+|for\s+)?(?:the\s+|any\s+|all\s+)?{_AI_ANY}\b"
    rf"\W+[^.\n]{{0,60}}?\b(?:you|must|should|please|ignore|send|do|don't|stop|instead|now|always|never|use|only)\b"
    r"|\bif\s+you\s+are\s+(?:an?\s+)?(?:ai|a\.i\.|assistant|agent|llm|language\s+model|chatbot|bot|automated)\b"
    r"|\b(?:if\s+you're|as)\s+an?\s+(?:ai|llm|language\s+model|assistant)\b[^.\n]{0,40}?\b(?:you\s+)?(?:must|should|need)\b"
    r"|\bwhen\s+you\s+(?:read|see|process)\s+this\b[^.\n]{0,40}?\b(?:you\s+)?(?:must|should|need|have|will)\b"
    r"|\b(?:instead\s+of\s+(?:summari[sz]ing|answering|responding|translating|doing\s+what)|"
    r"before\s+(?:you\s+)?(?:respond|responding|answer|answering|continu(?:e|ing)|reply|replying|proceed(?:ing)?))"
    r"\b[^.\n]{0,60}?\b(?:you\s+)?(?:must|should|need\s+to|have\s+to|first|always|call|send|read|run|use|"
    r"execute|include|tell|say|output|forward|email)\b"
    r"|\b(?:when|while)\s+summari[sz]ing\b[^.\n]{0,60}?\b(?:you\s+)?(?:must|should|always|include|add|say|tell)\b"
)
_NEW_ANCHORS = (
    "new instruction", "new task", "new rule", "new directive", "new prompt", "new objective", "new role",
    "updated instruction", "revised instruction", "from now on", "from this point", "starting now",
    "henceforth", "your task is", "your new", "your only task", "your real task", "your actual task",
    "real instructions", "actual instructions", "true instructions",
    "neue anweisung", "neue aufgabe", "ab sofort", "ab jetzt", "von nun an", "nouvelles instructions",
    "nouvelle tâche", "nouvelle instruction", "à partir de maintenant", "désormais", "nuevas instrucciones",
    "nueva tarea", "a partir de ahora", "de ahora en adelante", "novas instruções", "novas instrucoes",
    "nova tarefa", "a partir de agora", "nuove istruzioni", "nuovo compito", "d'ora in poi", "da ora in poi",
    "d'ora in avanti", "新的指令", "新指令", "新的指示", "新任务", "新任務", "从现在开始", "從現在開始",
    "从现在起", "新しい指示", "新たな指示", "新しいタスク", "これからは", "今後は", "今から",
    "новые инструкции", "новая инструкция", "новое задание", "новая задача", "с этого момента",
    "отныне", "теперь ты",
)  # fmt: skip
_NEW = (
    r"\b(?:new|updated|revised|real|actual|true|secret|hidden|additional|override)\s+"
    r"(?:instructions?|tasks?|rules?|directives?|prompts?|objectives?|role|orders|system\s+prompt)\s*(?::|-|are|is|follow)"
    r"|\bfrom\s+(?:now\s+on|this\s+point(?:\s+on)?),?\s+(?:you\s+(?:are|must|shall|will\s+(?:only|always|never|respond|answer|act|reply|obey))|"
    r"(?:always|never|only)\s+(?:respond|answer|reply|say|output)|respond|answer|reply|act\s+as|ignore|obey|pretend)\b"
    r"|\b(?:starting\s+now|henceforth)\b[^.\n]{0,30}?\b(?:you|your)\b"
    r"|\byour\s+(?:new|only|real|actual|true|next|primary)\s+(?:task|job|goal|objective|instructions?|role|purpose|mission)\b"
    r"|\byour\s+task\s+is\s+(?:now|to\s+(?:ignore|send|forward|reveal|delete|tell|say|output|write))"
    r"|neue\W+(?:anweisung|aufgabe)|(?:ab\s+sofort|ab\s+jetzt|von\s+nun\s+an),?\s+(?:bist\s+du|musst\s+du|antwortest\s+du|antworte|ignoriere)\b"
    r"|nouvelles?\W+(?:instructions?|tâche)|(?:à\s+partir\s+de\s+maintenant|désormais),?\s+(?:tu|vous)\s+"
    r"(?:es|êtes|dois|devez|réponds|répondez|ignores?|ignorez|obéis|obéissez)\b"
    r"|nuevas?\W+(?:instrucciones|tarea)|(?:a\s+partir\s+de\s+ahora|de\s+ahora\s+en\s+adelante),?\s+"
    r"(?:eres|debes|responde|responderás|ignora|obedece)\b"
    r"|novas?\W+(?:instru[çc][õo]es|tarefa)|a\s+partir\s+de\s+agora,?\s+(?:(?:você|voce)\s+(?:é|e|deve)|responda|ignore)\b"
    r"|nuov[eo]\W+(?:istruzioni|compito)|d(?:'|a\s+)ora\s+in\s+(?:poi|avanti),?\s+(?:sei|rispondi|devi|ignora)\b"
    r"|新的?(?:指令|指示|任务|任務)|从现在(?:开始|起)|從現在開始|新(?:しい|たな)(?:指示|タスク)|(?:これからは|今後は|今から)[^。\n]{0,20}?"
    r"(?:あなた|君|お前|回答|答え)"
    r"|нов(?:ые|ая|ое)\W+(?:инструкци|задани|задач)|(?:с\s+этого\s+момента|отныне)\b[^.\n]{0,30}?"
    r"\b(?:ты|вы|отвечай|отвечайте)|теперь\s+ты\b"
)
_ROLE_ANCHORS = (
    "you are now", "you're now", "you’re now", "you are no longer", "pretend", "act as", "behave as", "respond as",
    "jailbreak", "jailbroken", "dan mode", "developer mode", "god mode", "do anything now", "no restrictions",
    "no filters", "no guidelines", "no limits", "no censorship", "no rules", "without filters", "without guidelines",
    "without limits", "without censorship", "without rules", "without any",  "without restrictions", "without any restrictions", "no longer bound",
    "du bist jetzt", "du bist nun", "tu es maintenant", "vous êtes maintenant", "ahora eres", "agora você é",
    "agora voce e", "ora sei", "你现在是", "你現在是", "あなたは今", "今からあなたは", "ты теперь", "теперь ты",
)  # fmt: skip
_ROLE = (
    r"\byou(?:\s+are|'re|’re)\s+(?:now|no\s+longer)\s+(?:an?\s+|the\s+|my\s+|in\s+|going\s+to\s+|acting\s+as\s+)?"
    r"(?:dan|unrestricted|unfiltered|uncensored|jailbroken|free|evil|root|admin|sudo|developer|god|debug|"
    r"bound|limited|restricted|an?\s+ai|ai|assistant|chatbot|model|different|new|able|allowed|not|"
    r"(?:\w+\s+){0,2}mode|(?:\w+\s+){0,2}(?:ai|assistant|bot|model)\b)"
    r"|\bpretend\s+(?:to\s+be|you\s+(?:are|have|can)|that\s+you)\b[^.\n]{0,60}?"
    r"\b(?:no|without|unrestricted|unfiltered|any|evil|dan|admin|root|jailbr)"
    r"|\b(?:act|behave|respond)\s+as\s+(?:if\s+you\s+(?:are|were|have)|an?\s+(?:unrestricted|unfiltered|"
    r"uncensored|evil|jailbroken)|dan\b)"
    r"|\b(?:jailbreak|jailbroken|dan\s+mode|developer\s+mode\s+(?:is\s+now\s+)?(?:enabled|activated)|god\s+mode\s+(?:enabled|activated|on)|"
    r"do\s+anything\s+now)\b"
    r"|\b(?:no|without(?:\s+any)?)\s+(?:restrictions|filters|guidelines|limits|censorship|rules)\b[^.\n]{0,40}?"
    r"\b(?:you|from\s+now|respond|answer|answer\s+as)\b"
    r"|\bno\s+longer\s+bound\s+by\b"
    r"|\bdu\s+bist\s+(?:jetzt|nun)\b|\b(?:tu\s+es|vous\s+êtes)\s+maintenant\b|\bahora\s+eres\b"
    r"|\bagora\s+(?:você|voce)\s+(?:é|e)\b|\bora\s+sei\b|你(?:现在|現在)是|(?:あなたは今|今からあなたは)|\bты\s+теперь\b"
)
_CONCEAL_ANCHORS = tuple(
    f"{neg} {verb}"
    for neg in ("do not", "don't", "don’t", "never", "must not", "should not", "shouldn't")
    for verb in ("tell", "inform", "mention", "reveal", "notify", "alert", "show", "disclose", "say", "let the", "ever")
) + (
    "keep this", "keep it", "hide this", "hide it", "the user must not", "the user should not", "user does not need",
    "without telling", "without informing", "without asking", "without notifying", "without alerting",
    "without letting", "without the user", "sans informer", "sans prévenir", "sans le dire", "sin decir",
    "sin informar", "sem informar", "sem avisar", "senza dire", "senza informare", "ohne den benutzer",
    "ohne den nutzer", "nicht dem benutzer", "nicht dem nutzer", "不要告诉用户", "不要告訴用戶", "不要让用户",
    "不要讓用戶", "ユーザーに伝えない", "ユーザーには言わない", "ユーザーに知らせ", "не говори", "не сообщай",
    "пользователю не",
)  # fmt: skip
_CONCEAL = (
    r"\b(?:do\s+not|don't|don’t|never|must\s+not|should\s+not|shouldn't)\s+(?:ever\s+)?"
    r"(?:tell|inform|mention|reveal|notify|alert|show|disclose|say\s+(?:anything\s+)?to)\b"
    r"(?:\s+(?:this|that|it|anything|any\s+of\s+this))?(?:\s+(?:to|with))?\s+(?:the\s+|your\s+)?"
    r"(?:user|human|customer|operator|person|people)s?\b"
    r"|\b(?:do\s+not|don't|don’t|never)\s+let\s+the\s+(?:user|human)\s+(?:know|see)\b"
    r"|\bwithout\s+(?:telling|informing|notifying|asking|alerting|letting)\s+(?:the\s+)?(?:user|human|them)\b"
    r"|\bwithout\s+the\s+user(?:'s)?\s+(?:knowing|knowledge|noticing|consent)\b"
    r"|\b(?:keep|hide)\s+(?:this|it|these\s+instructions)\s+(?:secret|hidden|confidential)\s+from\s+the\s+(?:user|human)\b"
    r"|\bthe\s+user\s+(?:must|should)\s+not\s+(?:know|see|be\s+told|notice|find\s+out)\b"
    r"|\buser\s+does\s+not\s+need\s+to\s+know\b"
    r"|\bsans\s+(?:informer|prévenir|le\s+dire\s+à)\s+l'utilisateur|\bsin\s+(?:decir(?:le)?|informar)\s+(?:nada\s+)?al\s+usuario"
    r"|\bsem\s+(?:informar|avisar)\s+o\s+usu[aá]rio|\bsenza\s+(?:dire|informare)\s+(?:nulla\s+)?all'utente"
    r"|\b(?:ohne\s+den|nicht\s+dem)\s+(?:benutzer|nutzer)|不要(?:告诉|告訴|让)用户|不要讓用戶"
    r"|ユーザーに(?:伝えない|は言わない|知らせ(?:ない|ず))|не\s+(?:говори|сообщай)(?:те)?\s+пользовател|пользователю\s+не\s+(?:говори|сообщай)"
)
_SYSTEM_PROMPT_ANCHORS = ("reveal", "print", "output", "show", "repeat", "display", "leak", "dump", "tell me", "give me",
                          "write out", "share", "disclose", "what is", "what are", "what was", "what were",
                          "покажи", "выведи", "раскрой", "输出", "显示", "泄露", "告诉我", "システムプロンプトを")  # fmt: skip
_SYSTEM_PROMPT = (
    r"\b(?:reveal|print|output|show|repeat|display|leak|dump|tell\s+me|give\s+me|write\s+out|share|disclose|"
    r"what\s+(?:is|are|was|were))\s+(?:me\s+)?(?:your|the|all|my)?\s*(?:full\s+|entire\s+|exact\s+|original\s+|complete\s+)?"
    r"(?:system\s+(?:prompt|message|instructions)|initial\s+(?:instructions|prompt)|hidden\s+instructions|"
    r"original\s+instructions|developer\s+(?:message|instructions|prompt)|instructions\s+above|initial\s+prompt)"
    r"|(?:покажи|выведи|раскрой)\s+(?:свой\s+)?системный\s+промпт|(?:输出|显示|泄露|告诉我)(?:你的)?系统提示|システムプロンプトを(?:表示|出力|教え)"
)
_PATH_ANCHORS = (
    ".ssh/", ".aws/credentials", ".netrc", ".npmrc", ".pypirc", ".git-credentials", ".kube/config",
    ".docker/config.json", ".cursor/mcp.json", "/etc/passwd", "/etc/shadow", "claude_desktop_config.json",
    "mcp.json", "exfiltrat", "![", "read the .env", "read .env", "cat .env", "contents of the .env",
    "contents of .env", "include the .env", "the .env file", "your .env",
)  # fmt: skip
_PATHS = (
    r"\.ssh/(?:id_[a-z0-9]+|authorized_keys)\b|\.aws/credentials|\.netrc\b|\.npmrc\b|\.pypirc\b|\.git-credentials"
    r"|\.kube/config\b|\.docker/config\.json|\.cursor/mcp\.json|/etc/(?:passwd|shadow)\b|claude_desktop_config\.json"
    r"|mcp\.json\b|exfiltrat\w*"
    r"|!\[[^\]\n]{0,80}\]\(https?://[^)\s]{1,200}[?&][\w\-]{1,30}=(?:\{|\$|<|\[)"
    r"|(?:read|cat|include)\s+(?:the\s+)?\.env\b|contents\s+of\s+(?:the\s+)?\.env\b|(?:the|your)\s+\.env(?:\s+file)?\b"
)
_SEND_ANCHORS = ("to http", "to ftp", "at http", "into http", "to this url", "to the following", "to this address",
                 "to this endpoint", "to this webhook")  # fmt: skip
_SEND = (
    r"\b(?:send|forward|email|e-mail|mail|upload|post|transmit|exfiltrate|leak|copy|share|submit|report|log)\b"
    r"[^.\n]{0,80}?\b(?:to|at|into)\s+(?:(?:https?|ftp)://|(?:this|the\s+following)\s+(?:url|address|endpoint|webhook|server|email))"
)
_MAIL_ANCHORS = ("send", "forward", "email", "e-mail", "mail", "upload", "transmit", "leak", "copy", "share", "submit")
_MAIL = (
    r"\b(?:send|forward|email|e-mail|mail|upload|transmit|leak|copy|share|submit)\b[^.\n]{0,80}?"
    r"\b(?:contents?|credentials|conversation|chat\s+history|history|secrets|keys|tokens|passwords?|api\s+keys?|"
    r"data|files|everything|all\s+of\s+it)\b[^.\n@]{0,40}?\bto\s+[\w.+\-]+@[\w\-]+\.[a-z]{2,}"
)

RULES: tuple[Rule, ...] = (
    Rule("ignore_previous_instructions", "high", _IGNORE_ANCHORS, re.compile(f"{_IGNORE_EN}|{_IGNORE_EU}|{_IGNORE_CJK}")),
    Rule("ignore_previous_instructions", "high", _CJK_OBJECT_ANCHORS, re.compile(_CJK_OBJECT_FIRST)),
    Rule("chat_template_token", "high", _CHAT_ANCHORS, re.compile(_CHAT)),
    Rule("instruction_block", "high", _BLOCK_ANCHORS, re.compile(_BLOCK)),
    Rule("new_instructions", "high", _NEW_ANCHORS, re.compile(_NEW)),
    Rule("assistant_directive", "high", _DIRECTIVE_ANCHORS, re.compile(_DIRECTIVE)),
    Rule("role_override", "high", _ROLE_ANCHORS, re.compile(_ROLE)),
    Rule("conceal_from_user", "high", _CONCEAL_ANCHORS, re.compile(_CONCEAL)),
    Rule("system_prompt_exfiltration", "medium", _SYSTEM_PROMPT_ANCHORS, re.compile(_SYSTEM_PROMPT),
         requires=("system", "initial", "instructions", "developer", "системный", "系统提示", "システムプロンプト")),
    Rule("exfiltration", "medium", _PATH_ANCHORS, re.compile(_PATHS)),
    Rule("exfiltration", "medium", _SEND_ANCHORS, re.compile(_SEND), back=100),
    Rule("exfiltration", "medium", _MAIL_ANCHORS, re.compile(_MAIL), requires=("@",)),
)

# Spaced-out spellings of the words attacks most often obfuscate: seeing one makes the
# scanner join spaced letter runs in that string and look again.
_SPACED_WORDS = ("ignore", "disregard", "forget", "instructions", "previous", "system", "prompt", "override")
SPACED_ANCHORS: tuple[str, ...] = tuple(
    sep.join(word) for word in _SPACED_WORDS for sep in (" ", ".", "-", "_", "*", "|", "/", "·")
)


_NO_RULES: frozenset[int] = frozenset()


def anchor_table(reduced: bool = True) -> tuple[tuple[str, ...], tuple[tuple[int, ...], ...]]:
    """Every anchor and the indexes of the rules it triggers (spaced anchors trigger none),
    ASCII anchors first. The order of the anchors changes no finding: hits are reported
    by position, and each hit tries its rules by rule index.

    ``reduced`` leaves out an anchor that another anchor starts (``ignor`` of ``ignore``)
    and whose rules that one triggers too: wherever it occurs the shorter one occurs at the
    same start, and is reported before it (the automaton reports by end), so its rules have
    been tried there already and its hit would change nothing (tests/policy/detect/
    test_injection.py checks the findings against the full table's).
    """
    by_anchor: dict[str, set[int]] = {}
    for index, rule in enumerate(RULES):
        for anchor in rule.anchors:
            by_anchor.setdefault(anchor, set()).add(index)
    for anchor in SPACED_ANCHORS:
        by_anchor.setdefault(anchor, set())
    if reduced:
        full = by_anchor
        by_anchor = {
            anchor: rules
            for anchor, rules in full.items()
            if not rules
            or not any(rules <= full.get(anchor[:size], _NO_RULES) for size in range(1, len(anchor)))
        }
    # ASCII anchors first, so that they are a prefix of the table: the joint automaton for
    # ASCII text (anchors.py) holds only those, and keeps their indexes.
    ordered = sorted(by_anchor, key=lambda anchor: not anchor.isascii())
    return tuple(ordered), tuple(tuple(sorted(by_anchor[anchor])) for anchor in ordered)


_ANCHOR_TEXT, _ANCHOR_RULES = anchor_table()
_FIRST = itemgetter(0)
_SPACED_INDEX = frozenset(i for i, a in enumerate(_ANCHOR_TEXT) if a in SPACED_ANCHORS)
# A DFA: ~20 ms to build at import, and searches ~3x faster than the default NFA.
_AUTOMATON = ahocorasick_rs.BytesAhoCorasick(
    [a.encode() for a in _ANCHOR_TEXT], implementation=ahocorasick_rs.Implementation.DFA
)
ANCHORS: tuple[str, ...] = tuple(_ANCHOR_TEXT)
_ANCHOR_CHARS: tuple[int, ...] = tuple(len(anchor) for anchor in ANCHORS)
_ANCHOR_RULE_PAIRS: tuple[tuple[tuple[int, Rule], ...], ...] = tuple(
    tuple((index, RULES[index]) for index in rules) for rules in _ANCHOR_RULES
)
_RULE_STRIDE = len(RULES)
# The same, flattened for the verification loop (no attribute lookups per attempt):
# (rule index, kind, back, requires, match or search, severity).
_AttemptFn = Callable[..., "re.Match[str] | None"]
_ANCHOR_ATTEMPTS: tuple[tuple[tuple[int, str, int, tuple[str, ...], _AttemptFn, str], ...], ...] = tuple(
    tuple(
        (index, rule.kind, rule.back, rule.requires, rule.pattern.search if rule.back else rule.pattern.match,
         rule.severity)
        for index, rule in pairs
    )
    for pairs in _ANCHOR_RULE_PAIRS
)
# How far past an anchor's start a match may end: the same window whichever anchor found it.
_REACH = _AFTER + max(len(anchor) for anchor in anchor_table(reduced=False)[0])  # the same with or without reduction


def anchor_hits(folded: str, data: bytes | None = None) -> list[tuple[int, int, int]]:
    """``(anchor index, start, end)`` of every anchor occurrence in ``folded`` (overlapping).

    The automaton runs over UTF-8 bytes (``data``, when the caller has them): its ``str``
    interface costs ~15 ms per MB of non-ASCII text, the bytes one ~1.5 ms. Byte offsets
    of the (usually few) hits are mapped back to character offsets.
    """
    if data is None:
        data = folded.encode("utf-8", "surrogatepass")  # JSON may carry lone surrogates
    return char_hits(folded, data, byte_hits(data))


def byte_hits(data: bytes) -> list[tuple[int, int, int]]:
    """:func:`anchor_hits` in byte offsets of the UTF-8 ``data`` (empty: no rule can match)."""
    hits: list[tuple[int, int, int]] = _AUTOMATON.find_matches_as_indexes(data, overlapping=True)
    return hits


def char_hits(folded: str, data: bytes, hits: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """:func:`byte_hits` of ``data`` (``folded`` in UTF-8) mapped to character offsets."""
    if not hits or len(data) == len(folded):
        return hits
    # Only starts are mapped: a hit's bytes are its anchor's, so it ends len(anchor) characters on.
    chars = char_offsets(data, sorted({start for _, start, _ in hits}))
    lengths = _ANCHOR_CHARS
    return [(index, chars[start], chars[start] + lengths[index]) for index, start, _ in hits]


def spaced_anchor_seen(hits: Sequence[tuple[int, int, int]]) -> bool:
    return not _SPACED_INDEX.isdisjoint(map(_FIRST, hits))  # C loops, not a generator per hit


def find_injections(
    folded: str, hits: Sequence[tuple[int, int, int]], bounds: tuple[int, int] | None = None
) -> list[InjectionHit]:
    """Each kind's first match, verified at (or just before) one of its anchors in ``hits``.

    ``bounds`` keeps every match inside one string of a joined text. A rule whose matches
    start at their anchor costs one anchored ``match`` per occurrence, so the work grows
    with the number of anchor occurrences, not with the length of the text.
    """
    floor, ceiling = bounds if bounds is not None else (0, len(folded))
    found: list[InjectionHit] = []
    done: set[str] = set()
    # Anchors that start alike ("ignor", "ignore") try a rule once: keyed start * stride + rule.
    tried: set[int] = set()
    find = folded.find
    attempts = _ANCHOR_ATTEMPTS
    for anchor, start, _ in hits:
        base = start * _RULE_STRIDE
        for rule_index, kind, back, requires, attempt, severity in attempts[anchor]:
            if kind in done:
                continue
            key = base + rule_index
            if key in tried:
                continue
            tried.add(key)
            hi = start + _REACH
            if hi > ceiling:
                hi = ceiling
            lo = start - back
            if lo < floor:
                lo = floor
            if requires:
                for literal in requires:
                    if find(literal, lo, hi) >= 0:
                        break
                else:
                    continue
            match = attempt(folded, lo if back else start, hi)
            if match is not None:
                found.append(InjectionHit(kind, severity, match.start(), match.end()))
                done.add(kind)
    return found
