import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Progress on stderr, the one printer of every command: a line redrawn in place when stderr is a
/// terminal, a plain line every few seconds otherwise, nothing when quiet. Long writes report
/// bytes (`update`/`finish`: a bar, rate and ETA); step loops (train, trace) compose their own
/// line and hand it to `show`. Durations are written by `duration` (`42s`, `3m05s`, `1h02m`).
public final class ProgressReporter: @unchecked Sendable {
    public enum Style: Sendable { case automatic, bar, lines, quiet }

    private let label: String
    private let totalBytes: Int
    private let style: Style
    private let start = Date()
    private lazy var lastReport = start
    private let interval: TimeInterval

    public init(label: String, totalBytes: Int = 0, style: Style = .automatic) {
        self.label = label
        self.totalBytes = max(totalBytes, 1)
        switch style {
        case .automatic: self.style = isatty(STDERR_FILENO) == 1 ? .bar : .lines
        default: self.style = style
        }
        interval = self.style == .bar ? 0.1 : 5
    }

    func update(bytesDone: Int) {
        guard style != .quiet else { return }
        let now = Date()
        guard now.timeIntervalSince(lastReport) >= interval else { return }
        lastReport = now
        emit(bytesDone: bytesDone, final: false)
    }

    func finish(bytesDone: Int) {
        guard style != .quiet else { return }
        emit(bytesDone: bytesDone, final: true)
    }

    /// Shows `text`: redrawn on a terminal, at most every few seconds as plain lines; a
    /// `persistent` line (the last step, an evaluation) is always shown and stays on screen.
    public func show(_ text: String, persistent: Bool = false) {
        guard style != .quiet else { return }
        let now = Date()
        guard persistent || shownOnce == false || now.timeIntervalSince(lastReport) >= interval else { return }
        shownOnce = true
        lastReport = now
        let line = style == .bar ? "\r" + text + "\u{1B}[K" + (persistent ? "\n" : "") : text + "\n"
        FileHandle.standardError.write(Data(line.utf8))
    }

    private var shownOnce = false

    private func emit(bytesDone: Int, final: Bool) {
        let elapsed = max(Date().timeIntervalSince(start), 1e-6)
        let rate = Double(bytesDone) / elapsed
        let fraction = min(1, Double(bytesDone) / Double(totalBytes))
        let remaining = rate > 0 ? Double(totalBytes - bytesDone) / rate : 0
        let figures = "\(ByteSize.format(bytesDone)) / \(ByteSize.format(totalBytes))  \(ByteSize.format(Int(rate)))/s  " +
            (final ? String(format: "%.1fs", elapsed) : "ETA \(Self.duration(remaining))")
        var line: String
        if style == .bar {
            let width = 28
            let filled = Int(fraction * Double(width))
            line = "\r\(label) [\(String(repeating: "█", count: filled))\(String(repeating: "·", count: width - filled))] \(Int(fraction * 100))%  \(figures)\u{1B}[K"
            if final { line += "\n" }
        } else {
            line = "\(label): \(Int(fraction * 100))%  \(figures)\n"
        }
        FileHandle.standardError.write(Data(line.utf8))
    }

    /// `seconds` as `42s`, `3m05s` or `1h02m`; `--` when not finite.
    public static func duration(_ seconds: Double) -> String {
        guard seconds.isFinite else { return "--" }
        let s = Int(seconds.rounded())
        return s >= 3600 ? String(format: "%dh%02dm", s / 3600, s % 3600 / 60) : s >= 60 ? String(format: "%dm%02ds", s / 60, s % 60) : "\(s)s"
    }
}
