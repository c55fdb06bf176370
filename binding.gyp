# node-gyp build of the same addon, for tools that only drive node-gyp (e.g. @electron/rebuild,
# which builds against Electron's headers). The engine and ggml are built as static libraries by
# CMake (scripts/build-native.mjs --engine-only); node-gyp then compiles and links the N-API glue
# in native/addon/ against them. `npm run build` (cmake-js) remains the main build.
{
  "variables": {
    "engine_dir": "<(module_root_dir)/build/engine",
    "ggml_include": "<!(node -e \"import('./scripts/ggml-source.mjs').then(m => process.stdout.write(m.ggmlSource().dir + '/include'))\")",
  },
  "targets": [
    {
      "target_name": "sd_engine_cmake",
      "type": "none",
      "actions": [
        {
          "action_name": "cmake_engine",
          "inputs": ["<!@(node -p \"require('fs').readdirSync('native/engine', { recursive: true }).filter(f => /\\.(h|cpp)$/.test(f)).map(f => 'native/engine/' + f).join(' ')\")", "CMakeLists.txt"],
          "outputs": ["<(engine_dir)/libsd_engine.a"],
          "action": ["node", "scripts/build-native.mjs", "--engine-only", "<(engine_dir)"],
        }
      ],
    },
    {
      "target_name": "sdnode",
      "dependencies": ["sd_engine_cmake"],
      "sources": ["<!@(node -p \"require('fs').readdirSync('native/addon').filter(f => f.endsWith('.cpp')).map(f => 'native/addon/' + f).join(' ')\")"],
      "include_dirs": [
        "<!(node -p \"require('node-addon-api').include_dir\")",
        "native/engine",
        "<(ggml_include)",
      ],
      "defines": [
        "NAPI_VERSION=8",
        "NODE_ADDON_API_DISABLE_DEPRECATED",
        "NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS",
        "SDNODE_VERSION=\"<!(node -p \"require('./package.json').version\")\"",
      ],
      "cflags!": ["-fno-exceptions", "-fno-rtti"],
      "cflags_cc!": ["-fno-exceptions", "-fno-rtti"],
      "cflags_cc": ["-std=c++17", "-fexceptions", "-frtti", "-fvisibility=hidden"],
      "xcode_settings": {
        "GCC_ENABLE_CPP_EXCEPTIONS": "YES",
        "GCC_ENABLE_CPP_RTTI": "YES",
        "CLANG_CXX_LANGUAGE_STANDARD": "c++17",
        "MACOSX_DEPLOYMENT_TARGET": "11.0",
      },
      "libraries": [
        "<(engine_dir)/libsd_engine.a",
        "<(engine_dir)/libsd_cpu_kernels.a",
        "<(engine_dir)/libsd_core.a",
        "<(engine_dir)/ggml/src/libggml.a",
        "<(engine_dir)/ggml/src/libggml-cpu.a",
        "<(engine_dir)/ggml/src/libggml-base.a",
        "-lpthread",
      ],
      "conditions": [
        ["OS=='mac'", {"libraries": ["-framework Accelerate", "-framework Foundation"]}],
      ],
    },
  ],
}
