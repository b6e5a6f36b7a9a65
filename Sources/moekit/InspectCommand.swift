import ArgumentParser
import Foundation
import MoEKit

struct InspectCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "inspect",
        abstract: "Summarise a routing log: expert load per layer, balance, losses, heatmap, trend.",
        discussion: """
        Per layer: tokens per expert summed over the selected steps, each expert's share of the ideal \
        load (count ÷ tokens·k/E, 1 = balanced), max/mean, coefficient of variation (std/mean of the \
        counts), busiest and idlest expert, dead experts, and the token-weighted mean aux loss, z-loss \
        and entropy; a layer × expert heatmap (colour on a terminal) and the per-step trend of CV and \
        aux loss. Works on a log another process is still writing (HDF5 SWMR read).
        """
    )

    @Argument(help: "A routing log written by `moekit trace` (HDF5).")
    var log: String

    @Option(help: "Only this layer (0-based).")
    var layer: Int?

    @Option(help: "Only the step with this index.")
    var step: Int?

    @Option(help: "Only the last N steps.")
    var last: Int?

    @Flag(help: "Print JSON instead of text.")
    var json = false

    @Option(help: "Also write the layer × expert heatmap as an SVG file.")
    var svg: String?

    func validate() throws {
        if step != nil, last != nil { throw ValidationError("--step and --last exclude each other") }
        if let last, last < 1 { throw ValidationError("--last must be at least 1") }
        if let layer, layer < 0 { throw ValidationError("--layer must be 0 or more") }
    }

    func run() throws {
        try reportingErrors {
            if !IsolatedLogRead.isChild {
                // The parent: the child does the reading; its exit status is this command's.
                let status = try IsolatedLogRead.run(Array(CommandLine.arguments.dropFirst()), log: log)
                if status != 0 { throw ExitCode(status) }
                return
            }
            let selection: RoutingLogInspection.StepSelection = step.map { .step($0) } ?? last.map { .last($0) } ?? .all
            let inspection = try ReadDeadline.reading(log) { try RoutingLogInspection(path: log, layer: layer, selection: selection) }
            if let svg { try inspection.writeHeatmapSVG(to: svg) }
            if json {
                FileHandle.standardOutput.write(inspection.json().serialized(pretty: true))
                print()
            } else {
                print(inspection.textReport(colour: isatty(STDOUT_FILENO) == 1))
                if let svg { print("heatmap written to \(svg)") }
            }
        }
    }
}
