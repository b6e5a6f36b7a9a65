"""Deterministic mixed English/Chinese documents, for the tokenizer interop test and benchmark."""
import random

ENGLISH = ("the of and to in a is that for it as was with be by on not he this are or his from at which but have an "
           "they you were her she there been one all we their has would when if so no will more about up what can "
           "model expert experts routing router token tokens layer layers mixture upcycling sparse dense training "
           "MiniCPM MoE gate load balance capacity factor softmax checkpoint researcher logits attention 2024 3.14 "
           "don't it's e.g. (see Table 2) -- x86_64 GPU's naïve café résumé").split()
# Frequent characters first, then the rest of the CJK block (a long tail of rare ones).
CHINESE_COMMON = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总次品式活设及管特件长求老头基资边流路级少图山统接知较将组见计别她手角期根论运农指几九区强放决西被干做必战先回则任取据处队南给色光门即保治北造百规热领七海口东导器压志世金增争济阶油思术极交受联什认六共权收证改清己美再采转更单风切打白教速花带安场身车例真务具万每目至达走积示议声报斗完类八离华名确才科张信马节话米整空元况今集温传土许步群广石记需段研界拉林律叫且究观越织装影算低持音众书布复容儿须际商非验连断深难近矿千周委素技备半办青省列习响约支般史感劳便团往酸历市克何除消构府称太准精值号率族维划选标写存候毛亲快效斯院查江型眼王按格养易置派层片始却专状育厂京识适属圆包火住调满县局照参红细引听该铁价严龙飞混合模型路由器专家数字"


def documents(total_bytes, seed=0):
    """Lines (documents) of mixed text totalling about `total_bytes` UTF-8 bytes (newlines included)."""
    rng = random.Random(seed)
    lines, size = [], 0
    while size < total_bytes:
        words = []
        for _ in range(rng.randint(5, 300)):
            if rng.random() < 0.35:
                pool = CHINESE_COMMON if rng.random() < 0.9 else None
                run = "".join(rng.choice(pool) if pool else chr(rng.randint(0x4E00, 0x9FFF)) for _ in range(rng.randint(1, 12)))
                words.append(run + (rng.choice("，。、；") if rng.random() < 0.3 else ""))
            else:
                word = rng.choice(ENGLISH)
                if rng.random() < 0.1:
                    word = word.capitalize()
                words.append(word + (rng.choice(",.;:!?") if rng.random() < 0.1 else ""))
        line = " ".join(words)
        if rng.random() < 0.05:
            line = "  " + line + "\t end  "
        if rng.random() < 0.02:
            line = line + " 🤖 ℌ𝔢𝔩𝔩𝔬"
        lines.append(line)
        size += len(line.encode()) + 1
    return lines
