import Foundation
import Testing
@testable import MoEKit

@Suite struct LearningRateScheduleTests {
    /// WSD with η = 1, S = 100, W = 10, decay over the last 10 % (D = 10, T = 90) to r = 0.1:
    /// warmup 0.1, 0.2, …, 1.0 on steps 0…9; 1 on steps 10…89; exponential 0.1^((s−89)/10) on
    /// 90…99 (step 90: 0.1^0.1 = 0.7943282, step 94: 0.1^0.5 = 0.3162278, step 99: 0.1); 0.1 after.
    @Test func warmupStableExponentialDecayByHand() throws {
        let schedule = LearningRateSchedule.warmupStableDecay(peak: 1, warmupSteps: 10, totalSteps: 100, decayFraction: 0.1,
                                                              decay: .exponential, finalRatio: 0.1)
        try schedule.validate()
        #expect(schedule.decaySteps == 10)
        let expected: [Int: Float] = [0: 0.1, 4: 0.5, 9: 1, 10: 1, 50: 1, 89: 1, 90: 0.7943282, 94: 0.3162278, 99: 0.1, 150: 0.1]
        for (step, rate) in expected {
            #expect(abs(schedule.learningRate(at: step) - rate) < 1e-6, "step \(step): \(schedule.learningRate(at: step))")
        }
        #expect(schedule.phase(at: 9) == .warmup && schedule.phase(at: 10) == .stable && schedule.phase(at: 89) == .stable && schedule.phase(at: 90) == .decay)
        // Halving every D·ln2/ln10 = 3.0103 steps: the paper's 0.5^(Δs/T_half).
        let halfLife = try #require(schedule.exponentialHalfLife)
        #expect(abs(halfLife - 3.0103) < 1e-4)
        for step in 90 ..< 100 {
            let paper = Float(pow(0.5, Double(step - 89) / halfLife))
            #expect(abs(schedule.learningRate(at: step) - paper) < 1e-6)
        }
    }

    /// Linear decay: 1 − 0.9·p with p = (s − 89)/10: step 90 → 0.91, 95 → 0.46, 99 → 0.1.
    /// OpenBMB's WarmupStableDrop, lr·(0.1 + 0.9·(S − s')/D), is the same line.
    @Test func linearDecayByHand() throws {
        let schedule = LearningRateSchedule.warmupStableDecay(peak: 2, warmupSteps: 0, totalSteps: 100, decayFraction: 0.1,
                                                              decay: .linear, finalRatio: 0.1)
        try schedule.validate()
        #expect(schedule.learningRate(at: 0) == 2)
        #expect(schedule.learningRate(at: 89) == 2)
        #expect(abs(schedule.learningRate(at: 90) - 1.82) < 1e-6)
        #expect(abs(schedule.learningRate(at: 95) - 0.92) < 1e-6)
        #expect(abs(schedule.learningRate(at: 99) - 0.2) < 1e-6)
        #expect(schedule.exponentialHalfLife == nil)
    }

    /// Cosine with W = 10, S = 100, r = 0.1: p = (s − 9)/90; step 54 (p = ½) → 0.55; step 99 → 0.1;
    /// step 10 → 0.1 + 0.45·(1 + cos(π/90)) = 0.9997259.
    @Test func cosineByHand() throws {
        let schedule = LearningRateSchedule.cosine(peak: 1, warmupSteps: 10, totalSteps: 100, finalRatio: 0.1)
        try schedule.validate()
        #expect(abs(schedule.learningRate(at: 9) - 1) < 1e-7)
        #expect(abs(schedule.learningRate(at: 10) - 0.9997259) < 1e-6)
        #expect(abs(schedule.learningRate(at: 54) - 0.55) < 1e-6)
        #expect(abs(schedule.learningRate(at: 99) - 0.1) < 1e-6)
        #expect(abs(schedule.learningRate(at: 500) - 0.1) < 1e-6)
        #expect(schedule.phase(at: 10) == .decay)
    }

    @Test func constantWithWarmup() throws {
        let schedule = LearningRateSchedule.constant(peak: 0.01, warmupSteps: 4)
        try schedule.validate()
        #expect(schedule.learningRate(at: 0) == 0.0025)
        #expect(schedule.learningRate(at: 3) == 0.01)
        #expect(schedule.learningRate(at: 1000) == 0.01)
        #expect(LearningRateSchedule.constant(peak: 0.01, warmupSteps: 0).learningRate(at: 0) == 0.01)
    }

    /// MiniCPM's recipe and the rounding of D; impossible schedules name their flag.
    @Test func validatesAndRounds() {
        let minicpm = LearningRateSchedule.minicpm(peak: 0.01, warmupSteps: 2, totalSteps: 25)
        #expect(minicpm.decaySteps == 3)  // round(2.5) away from zero
        #expect(throws: TrainingError.invalidOption(name: "warmup", reason: "23 warmup steps and 3 decay steps do not fit in 25 steps")) {
            try LearningRateSchedule.minicpm(peak: 0.01, warmupSteps: 23, totalSteps: 25).validate()
        }
        #expect(throws: TrainingError.self) {
            try LearningRateSchedule.warmupStableDecay(peak: 1, warmupSteps: 0, totalSteps: 10, decayFraction: 0.5, decay: .exponential, finalRatio: 0).validate()
        }
        #expect(throws: TrainingError.invalidOption(name: "lr", reason: "must be positive, got -1.0")) {
            try LearningRateSchedule.constant(peak: -1, warmupSteps: 0).validate()
        }
        #expect(throws: TrainingError.self) { try LearningRateSchedule.cosine(peak: 1, warmupSteps: 10, totalSteps: 10, finalRatio: 0).validate() }
    }

    /// CLI names map to the cases and are validated; the description states the phases.
    @Test func namedSchedules() throws {
        let wsd = try LearningRateSchedule(named: "wsd", peak: 0.01, warmupSteps: 10, totalSteps: 100)
        #expect(wsd == .minicpm(peak: 0.01, warmupSteps: 10, totalSteps: 100))
        #expect(wsd.description == "wsd η=0.01: warmup 10, stable to step 90, exponential decay over 10 steps to 0.1η")
        #expect(try LearningRateSchedule(named: "wsd-linear", peak: 0.01, warmupSteps: 0, totalSteps: 10, decayFraction: 0.5, finalRatio: 0)
            == .warmupStableDecay(peak: 0.01, warmupSteps: 0, totalSteps: 10, decayFraction: 0.5, decay: .linear, finalRatio: 0))
        #expect(try LearningRateSchedule(named: "cosine", peak: 1, warmupSteps: 1, totalSteps: 5) == .cosine(peak: 1, warmupSteps: 1, totalSteps: 5, finalRatio: 0.1))
        #expect(try LearningRateSchedule(named: "constant", peak: 1, warmupSteps: 0, totalSteps: 0) == .constant(peak: 1, warmupSteps: 0))
        #expect(throws: TrainingError.invalidOption(name: "schedule", reason: "unknown schedule 'step'; choose one of wsd, wsd-linear, cosine, constant")) {
            _ = try LearningRateSchedule(named: "step", peak: 1, warmupSteps: 0, totalSteps: 10)
        }
        #expect(throws: TrainingError.self) { _ = try LearningRateSchedule(named: "wsd", peak: 1, warmupSteps: 95, totalSteps: 100) }
    }
}
