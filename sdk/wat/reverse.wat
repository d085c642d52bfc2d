;; reverse.wat: a routing strategy written by hand in the component-model text format.
;;
;; It ranks the candidates in reverse order (n-1, ..., 1, 0) and explains itself as "wat: reverse".
;; It targets world `strategy` of smart-router:gateway@0.2.0 (../../wit/gateway.wit): it exports
;; `smart-router:gateway/routing@0.2.0` and imports nothing (a component may import less than its
;; world offers). Build: `wasm-tools parse reverse.wat -o reverse.wasm` (or the Rust `wat` crate).
;; See README.md beside this file for the canonical-ABI layout notes.
(component

  ;; ---------------------------------------------------------------------------------------------
  ;; 1. The core module: linear memory, a bump allocator, `rank` and its post-return.
  ;;
  ;; Memory map (all static, below the heap):
  ;;      8 ..  32  return area of `rank` (result<ranking, string>, 24 bytes, align 4)
  ;;     32 ..  44  "wat: reverse" (the explanation, 12 bytes of UTF-8)
  ;;     64 ..      heap: everything `cabi_realloc` hands out (the host's copies of the arguments,
  ;;                then the `order` list); reset to 64 by post-return after every call.
  ;; ---------------------------------------------------------------------------------------------
  (core module $m
    (memory (export "memory") 1)
    (global $heap-base i32 (i32.const 64))
    (global $bump (mut i32) (i32.const 64))
    (data (i32.const 32) "wat: reverse")

    ;; cabi_realloc(old-ptr, old-size, align, new-size) -> ptr: a bump allocator. The host calls it
    ;; (old-ptr = 0) to copy the arguments in before each call to `rank`.
    (func $realloc (export "cabi_realloc")
      (param $old-ptr i32) (param $old-size i32) (param $align i32) (param $new-size i32)
      (result i32)
      (local $ptr i32)
      ;; Shrinking a block: keep it where it is.
      (if (i32.and (i32.ne (local.get $old-ptr) (i32.const 0))
                   (i32.le_u (local.get $new-size) (local.get $old-size)))
        (then (return (local.get $old-ptr))))
      ;; ptr = align_up(bump, align); bump = ptr + new-size (trap on 32-bit wrap-around).
      (local.set $ptr
        (i32.and (i32.add (global.get $bump) (i32.sub (local.get $align) (i32.const 1)))
                 (i32.sub (i32.const 0) (local.get $align))))
      (global.set $bump (i32.add (local.get $ptr) (local.get $new-size)))
      (if (i32.lt_u (global.get $bump) (local.get $ptr)) (then unreachable))
      ;; Grow the memory to ceil(bump / 64 KiB) pages when the heap runs past its end.
      (if (i32.gt_u (global.get $bump) (i32.shl (memory.size) (i32.const 16)))
        (then
          (if (i32.eq (memory.grow
                        (i32.sub (i32.shr_u (i32.add (global.get $bump) (i32.const 0xffff))
                                            (i32.const 16))
                                 (memory.size)))
                      (i32.const -1))
            (then unreachable))))
      ;; Growing an existing block: copy its contents over.
      (if (local.get $old-ptr)
        (then (memory.copy (local.get $ptr) (local.get $old-ptr) (local.get $old-size))))
      (local.get $ptr))

    ;; rank(args) -> ret-area.
    ;; The flattened parameters are 17 core values (request-info 13 + list 2 + string 2) > 16, so
    ;; the host stores the tuple (request-info, list<candidate>, string) in memory (allocated with
    ;; cabi_realloc, align 8, 72 bytes) and passes one pointer to it:
    ;;   0 .. 56  request-info (size 56, align 8: see README.md)
    ;;  56 .. 64  candidates: ptr at 56, len at 60
    ;;  64 .. 72  params: ptr at 64, len at 68
    ;; The result flattens to 6 values (> 1), so `rank` returns a pointer to this layout:
    ;;   +0 u8 discriminant (0 = ok)  +4 order.ptr  +8 order.len
    ;;   +12 u8 explanation discriminant (1 = some)  +16 explanation.ptr  +20 explanation.len
    (func (export "rank") (param $args i32) (result i32)
      (local $n i32) (local $order i32) (local $i i32)
      (local.set $n (i32.load offset=60 (local.get $args)))          ;; candidates.len
      (local.set $order                                               ;; n u32s, align 4
        (call $realloc (i32.const 0) (i32.const 0) (i32.const 4)
                       (i32.shl (local.get $n) (i32.const 2))))
      ;; order[i] = n - 1 - i
      (block $done
        (loop $next
          (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
          (i32.store (i32.add (local.get $order) (i32.shl (local.get $i) (i32.const 2)))
                     (i32.sub (i32.sub (local.get $n) (i32.const 1)) (local.get $i)))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br $next)))
      (i32.store8 offset=8  (i32.const 0) (i32.const 0))                ;; ok
      (i32.store  offset=12 (i32.const 0) (local.get $order))           ;; order.ptr
      (i32.store  offset=16 (i32.const 0) (local.get $n))               ;; order.len
      (i32.store8 offset=20 (i32.const 0) (i32.const 1))                ;; explanation: some
      (i32.store  offset=24 (i32.const 0) (i32.const 32))               ;; "wat: reverse".ptr
      (i32.store  offset=28 (i32.const 0) (i32.const 12))               ;; "wat: reverse".len
      (i32.const 8))

    ;; post-return: the host has copied the answer out; free everything of this call. Without it
    ;; a warm instance (reused for thousands of calls) would grow its memory on every call.
    (func (export "cabi_post_rank") (param i32)
      (global.set $bump (global.get $heap-base)))
  )
  (core instance $i (instantiate $m))

  ;; ---------------------------------------------------------------------------------------------
  ;; 2. The component-level types, field for field as in gateway.wit (names and order matter:
  ;;    wasmtime checks records and enums structurally, by field and case names).
  ;; ---------------------------------------------------------------------------------------------
  (type $endpoint (enum "chat" "embeddings"))
  (type $health (enum "healthy" "degraded" "probing"))
  (type $request-info (record
    (field "model" string)
    (field "estimated-prompt-tokens" u32)
    (field "max-output-tokens" (option u32))
    (field "is-stream" bool)
    (field "needs-tools" bool)
    (field "needs-vision" bool)
    (field "needs-json" bool)
    (field "now-ms" u64)
    (field "random" u64)
    (field "sequence" u64)
    (field "endpoint" $endpoint)))
  (type $candidate (record
    (field "id" string)
    (field "provider" string)
    (field "model" string)
    (field "priority" u32)
    (field "weight" f64)
    (field "input-cost-per-1k" f64)
    (field "output-cost-per-1k" f64)
    (field "effective-cost" f64)
    (field "context-length" (option u32))
    (field "latency-ms" (option f64))
    (field "ttft-ms" (option f64))
    (field "tokens-per-second" (option f64))
    (field "success-rate" f64)
    (field "in-flight" u32)
    (field "consecutive-failures" u32)
    (field "quota-remaining" (option f64))
    (field "quota-remaining-requests" (option u64))
    (field "health" $health)))
  (type $ranking (record
    (field "order" (list u32))
    (field "explanation" (option string))))
  (type $rank-type (func
    (param "request" $request-info)
    (param "candidates" (list $candidate))
    (param "params" string)
    (result (result $ranking (error string)))))

  ;; Lift the core `rank` into a component function. (Explicit aliases and bare indices in the
  ;; options: the one spelling that both old and new text parsers accept.)
  (alias core export $i "memory" (core memory $mem))
  (alias core export $i "cabi_realloc" (core func $realloc))
  (alias core export $i "rank" (core func $core-rank))
  (alias core export $i "cabi_post_rank" (core func $post-rank))
  (func $rank (type $rank-type)
    (canon lift (core func $core-rank)
      (memory $mem)
      (realloc $realloc)
      string-encoding=utf8
      (post-return $post-rank)))

  ;; ---------------------------------------------------------------------------------------------
  ;; 3. The exported instance. An exported function may only mention records and enums that are
  ;;    themselves exported (named), and so may an exported record. So, like wit-component, a
  ;;    small shim component takes each type and the function as imports and re-exports them
  ;;    under their WIT names, each record written in terms of the already exported types.
  ;; ---------------------------------------------------------------------------------------------
  (component $routing
    ;; Imports: each record refers to the imported enums (an import may not refer to an export).
    (type $endpoint' (enum "chat" "embeddings"))
    (import "import-type-endpoint" (type $endpoint (eq $endpoint')))
    (type $health' (enum "healthy" "degraded" "probing"))
    (import "import-type-health" (type $health (eq $health')))
    (type $request-info' (record
      (field "model" string)
      (field "estimated-prompt-tokens" u32)
      (field "max-output-tokens" (option u32))
      (field "is-stream" bool)
      (field "needs-tools" bool)
      (field "needs-vision" bool)
      (field "needs-json" bool)
      (field "now-ms" u64)
      (field "random" u64)
      (field "sequence" u64)
      (field "endpoint" $endpoint)))
    (import "import-type-request-info" (type $request-info (eq $request-info')))
    (type $candidate' (record
      (field "id" string)
      (field "provider" string)
      (field "model" string)
      (field "priority" u32)
      (field "weight" f64)
      (field "input-cost-per-1k" f64)
      (field "output-cost-per-1k" f64)
      (field "effective-cost" f64)
      (field "context-length" (option u32))
      (field "latency-ms" (option f64))
      (field "ttft-ms" (option f64))
      (field "tokens-per-second" (option f64))
      (field "success-rate" f64)
      (field "in-flight" u32)
      (field "consecutive-failures" u32)
      (field "quota-remaining" (option f64))
      (field "quota-remaining-requests" (option u64))
      (field "health" $health)))
    (import "import-type-candidate" (type $candidate (eq $candidate')))
    (type $ranking' (record
      (field "order" (list u32))
      (field "explanation" (option string))))
    (import "import-type-ranking" (type $ranking (eq $ranking')))
    (import "import-func-rank" (func $rank
      (param "request" $request-info)
      (param "candidates" (list $candidate))
      (param "params" string)
      (result (result $ranking (error string)))))

    ;; Exports: each one is ascribed a type written in terms of the exports before it, so that
    ;; the instance's `request-info.endpoint` is its own exported `endpoint` (and so on).
    (export $endpoint-e "endpoint" (type $endpoint))
    (export $health-e "health" (type $health))
    (type $request-info-x (record
      (field "model" string)
      (field "estimated-prompt-tokens" u32)
      (field "max-output-tokens" (option u32))
      (field "is-stream" bool)
      (field "needs-tools" bool)
      (field "needs-vision" bool)
      (field "needs-json" bool)
      (field "now-ms" u64)
      (field "random" u64)
      (field "sequence" u64)
      (field "endpoint" $endpoint-e)))
    (type $candidate-x (record
      (field "id" string)
      (field "provider" string)
      (field "model" string)
      (field "priority" u32)
      (field "weight" f64)
      (field "input-cost-per-1k" f64)
      (field "output-cost-per-1k" f64)
      (field "effective-cost" f64)
      (field "context-length" (option u32))
      (field "latency-ms" (option f64))
      (field "ttft-ms" (option f64))
      (field "tokens-per-second" (option f64))
      (field "success-rate" f64)
      (field "in-flight" u32)
      (field "consecutive-failures" u32)
      (field "quota-remaining" (option f64))
      (field "quota-remaining-requests" (option u64))
      (field "health" $health-e)))
    (export $request-info-e "request-info" (type $request-info) (type (eq $request-info-x)))
    (export $candidate-e "candidate" (type $candidate) (type (eq $candidate-x)))
    (export $ranking-e "ranking" (type $ranking))
    (export "rank" (func $rank) (func
      (param "request" $request-info-e)
      (param "candidates" (list $candidate-e))
      (param "params" string)
      (result (result $ranking-e (error string)))))
  )
  (instance $routing-instance (instantiate $routing
    (with "import-type-endpoint" (type $endpoint))
    (with "import-type-health" (type $health))
    (with "import-type-request-info" (type $request-info))
    (with "import-type-candidate" (type $candidate))
    (with "import-type-ranking" (type $ranking))
    (with "import-func-rank" (func $rank))))
  (export "smart-router:gateway/routing@0.2.0" (instance $routing-instance))
)
